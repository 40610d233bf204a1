import collections
import json

import pytest

from data_prep.document import Document
from data_prep.executors import LocalExecutor
from data_prep.stages import StageConfigError, build_stage
from data_prep.stages.files import read_documents, write_documents
from data_prep.stages.runner import jsonl_input, run_stages

QUESTION = "Which planet in our solar system has the largest number of known moons orbiting it today"
FILLER = "The quarterly report covered sales, staffing and the plans for the new warehouse. " * 8  # 656 chars


@pytest.fixture
def eval_sets(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"query": QUESTION, "choices": ["Saturn", "Mars"], "gold": 0}) + "\n"
                  + json.dumps({"query": "Short one?", "choices": ["a", "b"]}) + "\n")
    story = tmp_path / "story.txt"
    story.write_text("Once upon a time a small fox lived at the edge of a very quiet forest near the river.\n\n"
                     "Second paragraph.\n")
    return {"qa": str(qa), "story": str(story)}


def run(tmp_path, specs, docs, world_size=1, name="work"):
    write_documents(tmp_path / f"{name}-in.jsonl", docs)
    result = run_stages(specs, jsonl_input([tmp_path / f"{name}-in.jsonl"]), world_size, tmp_path / name,
                        LocalExecutor(1))
    return [d for p in result.outputs for d in read_documents(p)], result


def test_decontaminate_drop_counts_hits_per_eval_set(tmp_path, eval_sets):
    words = QUESTION.split()
    docs = [Document(f"Intro. {QUESTION.upper()}? Saturn!", "d/0", "web"),  # case and punctuation differ
            Document(" ".join(words[:12]) + " and more words follow here", "d/1", "web"),  # 12-gram only
            Document("a small fox lived at the edge of a very quiet forest near the river, and "
                     + QUESTION, "d/2", "web"),
            Document(FILLER, "d/3", "web")]
    out, result = run(tmp_path, [{"type": "decontaminate", "eval_sets": eval_sets}], docs)
    assert [d.id for d in out] == ["d/1", "d/3"]
    stats = result.stats[0]
    assert stats.removed == {"decontaminate:contaminated": 2}
    assert stats.counters == {"docs_hit:qa": 2, "docs_hit:story": 1}
    report = result.reports["decontaminate"]
    # qa: 16 question + 2 choice words -> 6 13-grams; story: 19 words -> 7; short examples add none
    assert report["ngrams_per_eval_set"] == {"qa": 6, "story": 7}


def test_decontaminate_cut_policy_gpt3(tmp_path, eval_sets):
    prefix, suffix = FILLER[:500], FILLER[:300]
    docs = [Document(f"{prefix} {QUESTION} {suffix}", "d/0", "web"),
            Document(f"{QUESTION} {FILLER[:150]}", "d/1", "web"),  # fragment after the cut < 200 chars
            Document(" ".join([f"{QUESTION} {FILLER[:450]}"] * 11), "d/2", "web")]  # 11 separate cuts
    out, result = run(tmp_path, [{"type": "decontaminate", "eval_sets": eval_sets, "policy": "cut"}], docs)
    assert [d.id for d in out] == ["d/0#part0"]  # the suffix left after its 200-char margin is < 200 chars
    (part,) = out
    assert part.text == prefix[:301].strip()  # the match starts at 501; 200 characters before it go too
    assert QUESTION.split()[0] not in part.text and part.meta["decontam_part"] == 0
    stats = result.stats[0]
    assert stats.removed == {"decontaminate:cut_to_nothing": 1, "decontaminate:too_many_cuts": 1}
    assert stats.counters["spans_cut"] == 1 + 1 + 11 and stats.counters["docs_hit:qa"] == 3


def test_decontaminate_bad_paths_fail_clearly(tmp_path):
    with pytest.raises(StageConfigError, match="no file matches"):
        build_stage({"type": "decontaminate", "eval_sets": {"x": str(tmp_path / "missing*.jsonl")}})
    with pytest.raises(StageConfigError, match="policy must be"):
        build_stage({"type": "decontaminate", "eval_sets": {"x": __file__}, "policy": "mask"})


def mix_docs():
    docs = [Document("a" * 99, f"a/{i:04d}", "books") for i in range(1000)]  # 99,000 bytes
    docs += [Document("w" * 100, f"w/{i:04d}", "wiki") for i in range(100)]  # 10,000 bytes
    docs += [Document("s" * 10, f"s/{i:04d}", "spam") for i in range(100)]  # 1,000 bytes
    return docs


def test_mix_reaches_target_shares(tmp_path):
    spec = {"type": "mix", "weights": {"books": 0.5, "wiki": 0.5, "spam": 0.0}, "seed": 7}
    out, result = run(tmp_path, [spec], mix_docs())
    size = collections.Counter()
    for d in out:
        size[d.source] += len(d.text)
    assert size["spam"] == 0
    assert size["books"] / sum(size.values()) == pytest.approx(0.5, abs=0.02)
    report = result.reports["mix"]
    assert report["rates"] == pytest.approx({"books": 0.5 * 110_000 / 99_000, "wiki": 5.5, "spam": 0.0})
    copies = collections.Counter(d.id.split("#")[0] for d in out if d.source == "wiki")
    assert set(copies.values()) == {5, 6}  # 5.5 = five copies, and a sixth half the time
    assert sum(copies.values()) == pytest.approx(550, abs=25)
    stats = result.stats[0]
    assert stats.docs_out == stats.docs_in - stats.docs_removed + stats.counters["repeated_docs:wiki"]
    assert stats.counters["units_out:wiki"] == 100 * sum(copies.values())


def test_mix_is_independent_of_task_layout(tmp_path):
    spec = {"type": "mix", "weights": {"books": 1.0, "wiki": 1.0, "spam": 1.0}}
    docs = mix_docs()
    one, _ = run(tmp_path, [spec], docs, world_size=1, name="one")
    for k in range(3):
        write_documents(tmp_path / f"part{k}.jsonl", docs[k::3])
    result = run_stages([spec], jsonl_input([tmp_path / f"part{k}.jsonl" for k in range(3)]), 3,
                        tmp_path / "three", LocalExecutor(1))
    three = [d for p in result.outputs for d in read_documents(p)]
    assert sorted(d.id for d in one) == sorted(d.id for d in three)


def test_mix_needs_a_weight_for_every_source(tmp_path):
    with pytest.raises(StageConfigError, match=r"sources \['spam'\] have no weight"):
        run(tmp_path, [{"type": "mix", "weights": {"books": 1.0, "wiki": 1.0}}], mix_docs())
