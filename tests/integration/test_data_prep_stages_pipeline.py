"""`python -m data_prep` with document stages, end to end on a small mixed corpus.

HTML pages and JSONL files with every kind of bad input go through extraction, filters, dedup,
decontamination and mixing into real shards; the manifest, report.md and the removal log account
for every document. Local processes, Ray and a killed-then-resumed run write the same bytes.
"""

import gzip
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from data_prep import prepare
from data_prep.config import config_from_dict
from data_prep.document import Document
from data_prep.errors import ConfigError
from data_prep.split import SplitStage, hash_fraction
from data_prep.stats import StageStats
from jaxlm.data import format
from tests.helpers import decoded_records, subprocess_env


SENTENCES = """The river runs through the old town and past the market where farmers sell their fruit.
Many of the houses along the bank were built with stone from the hills to the north.
In winter the water rises and the bridge is closed to carts for a few weeks.
The school at the end of the street has taught children to read for over a century.
Visitors often stop at the small museum that keeps letters written by the first settlers.
A new library opened last spring with a reading room that looks over the garden.
The council plans to repair the road to the station before the summer festival begins.
Fishermen say that the best time to catch trout is early in the morning after rain.
Local bakers have made the same rye bread for generations and still sell it warm.
Scientists from the university measure the quality of the water every month.
The forest to the east is home to deer, foxes and a great many birds.
An old mill stands on the far side of the river and now holds a small cafe.
Children walk to school in groups and cross the square with a teacher.
The choir sings in the church on Sundays and gives a concert at the end of the year.
Farmers worry that a dry summer would leave the fields without enough water.
The town hall keeps maps that show how the streets have changed over the years.
A painter who lived here drew the bridge many times in every season of the year.
Trains to the city leave every hour and take a little more than forty minutes.
The market is busiest on Saturday, when people come from villages all around.
Volunteers clean the paths along the river twice a year and plant new trees.
Most families keep a garden with vegetables, herbs and a few rows of flowers.
The doctor has worked in the same small clinic since she finished her studies.
Storms in the autumn sometimes bring down branches and cut the power for a day.
The football club trains on the field behind the school on Tuesday evenings.
Old songs about the river are still taught to children in the music class.
A baker and a carpenter started the first shops on the main street long ago.
People say the view from the hill is the finest in the whole valley at sunset.
The new bus line links the town with three villages that had no service before.
Students at the college study farming, building and the care of forests.
Every house on the square has a window box full of red and white flowers.""".splitlines()

EVAL_PASSAGE = ("Quartz crystals that form deep beneath volcanic plateaus often trap tiny bubbles of ancient "
                "seawater which geologists later analyse to reconstruct prehistoric ocean chemistry")


def prose(seed: int, sentences: int = 8) -> str:
    return " ".join(random.Random(seed).sample(SENTENCES, sentences))


def page(title: str, body: str) -> str:
    menu = "".join(f'<li><a href="/{w}">{w.title()}</a></li>' for w in ("news", "sport", "weather", "contact"))
    paragraphs = "".join(f"<p>{p}.</p>" for p in body.rstrip(".").split(". "))
    return (f"<html><head><title>{title}</title><script>var tracking = 1;</script></head><body>"
            f"<nav><ul>{menu}</ul></nav><header><h1>Town Gazette</h1></header>"
            f"<article><h2>{title}</h2>{paragraphs}</article>"
            f"<footer>Copyright 2024 Town Gazette. All rights reserved. Privacy policy. Cookie settings.</footer>"
            f"</body></html>")


# What each bad or redundant input must turn into: (id or file:line, reason)
EXPECTED_REMOVALS = {
    ("pages/blob.html", "read:binary_file"),
    ("pages/empty.html", "read:empty_file"),
    ("web/a.jsonl:2", "read:malformed_json"),
    ("web/a.jsonl:4", "read:missing_text_field"),
    ("web/a.jsonl:6", "read:blank_line"),
    ("web/a.jsonl:5", "unicode_fix:empty"),
    ("web/b.jsonl:3", "language:other_language"),
    ("web/b.jsonl:4", "gopher_quality:word_count"),
    ("web/b.jsonl:2", "exact_dedup:exact_duplicate"),
    ("web/b.jsonl:1", "minhash_dedup:near_duplicate"),
    ("web/b.jsonl:5", "decontaminate:contaminated"),
}
STAGES = ["html_extract", "unicode_fix", "language", "gopher_quality", "exact_dedup", "minhash_dedup",
          "decontaminate", "mix"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """pages/: 3 articles, an empty and a binary file; web/a.jsonl and b.jsonl: good documents
    mixed with a malformed line, a missing field, an empty text, a blank line, another language,
    a too short text, an exact and a near copy of a.jsonl's documents, and an eval passage."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "pages").mkdir()
    (root / "web").mkdir()
    for i in range(3):
        (root / "pages" / f"p{i}.html").write_text(page(f"News {i}", prose(100 + i, 7)))
    (root / "pages" / "empty.html").write_bytes(b"")
    (root / "pages" / "blob.html").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    good = [prose(i) for i in range(4)]
    near = good[0].replace("river", "stream", 1).replace("houses", "homes", 1)
    a = [json.dumps({"text": good[0]}), '{"text": "cut off', json.dumps({"text": good[1]}),
         json.dumps({"body": good[2]}), json.dumps({"text": ""}), "", json.dumps({"text": good[2]})]
    b = [json.dumps({"text": near}),
         json.dumps({"text": good[1].upper().replace(".", "!")}),  # the same words: an exact duplicate
         json.dumps({"text": "Le fleuve traverse la vieille ville et passe devant le marché où les paysans "
                             "vendent leurs fruits. Beaucoup de maisons au bord de l'eau ont été construites "
                             "avec la pierre des collines du nord, et en hiver le pont est fermé aux charrettes "
                             "pendant quelques semaines quand l'eau monte. L'école au bout de la rue apprend "
                             "à lire aux enfants depuis plus d'un siècle et les visiteurs s'arrêtent souvent au "
                             "petit musée."}),
         json.dumps({"text": prose(60, 2)}),  # English, but under Gopher's 50 words
         json.dumps({"text": prose(50, 4) + " " + EVAL_PASSAGE + ". " + prose(51, 3)}),
         json.dumps({"text": good[3]})]
    (root / "web" / "a.jsonl").write_text("\n".join(a) + "\n")
    (root / "web" / "b.jsonl").write_text("\n".join(b) + "\n")
    (root / "evals.jsonl").write_text(json.dumps({"context": EVAL_PASSAGE, "answer": "seawater"}) + "\n")
    return root


def raw_config(corpus, out, **extra):
    return {
        "output": str(out),
        "sources": [{"name": "pages", "type": "html", "paths": [str(corpus / "pages" / "*.html")], "weight": 0.8},
                    {"name": "web", "type": "jsonl", "paths": [str(corpus / "web" / "*.jsonl")], "weight": 0.2}],
        "stages": [{"type": "html_extract", "sources": ["pages"]}, {"type": "unicode_fix"},
                   {"type": "language"}, {"type": "gopher_quality"}, {"type": "exact_dedup"},
                   {"type": "minhash_dedup"},
                   {"type": "decontaminate", "eval_sets": {"trivia": str(corpus / "evals.jsonl")}},
                   {"type": "mix", "seed": 0}],
        "tasks": 3,
        "workers": 1,
        "seed": 5,
        "split": {"val_fraction": 0.3},
        "tokenizer": {"vocab_size": 400},
        **extra,
    }


def quiet(_):
    pass


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    return prepare(config_from_dict(raw_config(corpus, out)), log=quiet), str(out)


def test_every_document_is_accounted_for(corpus, reference):
    manifest, out = reference
    stages = manifest["stages"]
    assert [s["stage"] for s in stages] == ["read", *STAGES, "split", "encode"]
    for before, after in zip(stages, stages[1:]):  # counts after every stage chain into the next
        assert (after["documents_in"], after["bytes_in"]) == (before["documents_out"], before["bytes_out"])
    for s in stages:
        repeats = sum(v for k, v in s["counters"].items() if k.startswith("repeated_docs:"))
        assert s["documents_out"] == s["documents_in"] - sum(s["removed"].values()) + repeats, s["stage"]
    read = stages[0]
    assert read["removed"] == {"read:binary_file": 1, "read:blank_line": 1, "read:empty_file": 1,
                               "read:malformed_json": 1, "read:missing_text_field": 1}
    assert (read["documents_in"], read["documents_out"]) == (18, 13)  # 5 pages + 7 + 6 lines - 5 bad inputs
    assert read["counters"]["documents:pages"] == 3 and read["counters"]["documents:web"] == 10
    by_stage = {s["stage"]: s for s in stages}
    for where, reason in EXPECTED_REMOVALS:  # each with its file and line
        stage = by_stage[reason.split(":")[0]]
        assert stage["removed"][reason] >= 1 and where in stage["examples"][reason], (where, reason)
    assert by_stage["html_extract"]["bytes_out"] < by_stage["html_extract"]["bytes_in"]  # menus, scripts gone
    assert by_stage["decontaminate"]["counters"] == {"docs_hit:trivia": 1}
    mix = by_stage["mix"]
    assert sum(mix["counters"][f"units_out:{s}"] for s in ("pages", "web")) == mix["bytes_out"]

    # every removal is in the log, with its reason; nothing else is missing from the shards
    with gzip.open(os.path.join(out, "removed.jsonl.gz"), "rt", encoding="utf-8") as f:
        log = [json.loads(line) for line in f]
    logged = {(r["id"], r["reason"]) for r in log}
    assert EXPECTED_REMOVALS <= logged
    assert logged - EXPECTED_REMOVALS == {(r["id"], "mix:downsampled") for r in log if r["reason"] == "mix:downsampled"}
    assert len(log) == sum(sum(s["removed"].values()) for s in stages)
    by_split = decoded_records(manifest, out)
    texts = by_split["train"] + by_split["val"]
    assert len(texts) == stages[-1]["documents_out"] == sum(manifest["splits"][k]["documents"] for k in format.SPLITS)
    assert all(t.count(".") >= 7 and "Town Gazette" not in t and "tracking" not in t for t in texts)
    assert not any(EVAL_PASSAGE[:40] in t or "fleuve" in t or t.isupper() for t in texts)
    sampled = {r["id"] for r in log if r["reason"] == "mix:downsampled"}
    good = {"web/a.jsonl:1": prose(0), "web/a.jsonl:3": prose(1), "web/a.jsonl:7": prose(2), "web/b.jsonl:6": prose(3),
            **{f"pages/p{i}.html:0": f"News {i}\n" for i in range(3)}}  # the extracted pages start with their title
    for doc_id, text in good.items():  # a good document is in the shards unless the mix sampled it out
        assert any(text in t for t in texts) == (doc_id not in sampled), doc_id
    assert mix["counters"]["repeated_docs:pages"] == 3 and mix["removed"]["mix:downsampled"] >= 1  # weights 0.8 / 0.2
    for i in range(3):  # each page twice, both copies in the split of the original
        copies = {split: sum(good[f"pages/p{i}.html:0"] in t for t in by_split[split]) for split in format.SPLITS}
        assert sorted(copies.values()) == [0, 2], copies
    assert by_split["val"] and by_split["train"]

    report = pathlib.Path(out, "report.md").read_text()
    assert "| read:malformed_json | 1 |" in report and "`web/a.jsonl:2`" in report
    assert "## minhash_dedup: duplicate clusters" in report and "| cluster size | clusters |\n|---|---|\n| 2 | 1 |" in report
    assert manifest["stage_reports"]["minhash_dedup"]["cluster_sizes"] == {"2": 1}
    assert "| trivia |" in report and "## mix: source mix (in bytes)" in report
    assert sorted(os.listdir(out)) == ["manifest.json", "removed.jsonl.gz", "report.md", "shards", "tokenizer.log",
                                       "tokenizer.model"]  # the stages' task files are gone


def test_process_pool_and_task_count_give_the_same_bytes(corpus, reference, tmp_path):
    manifest, _ = reference
    other = prepare(config_from_dict(raw_config(corpus, tmp_path / "out", tasks=1, workers=2)), log=quiet)
    assert other["splits"] == manifest["splits"] and other["tokenizer"] == manifest["tokenizer"]


def test_ray_gives_the_same_bytes(corpus, reference, tmp_path):
    ray = pytest.importorskip("ray")
    manifest, _ = reference
    try:
        on_ray = prepare(config_from_dict(raw_config(corpus, tmp_path / "out", executor={"kind": "ray"}, workers=2)),
                         log=quiet)
        assert ray.is_initialized()  # Ray really ran the tasks
    finally:
        ray.shutdown()
    assert on_ray["splits"] == manifest["splits"] and on_ray["tokenizer"] == manifest["tokenizer"]
    assert on_ray["stages"] == manifest["stages"] and on_ray["stage_reports"] == manifest["stage_reports"]


SLOW_CLI = textwrap.dedent("""
    import dataclasses, sys, time
    from data_prep.stages.base import Mapper
    from data_prep.stages.registry import register

    @register("sleep")
    @dataclasses.dataclass
    class Sleep(Mapper):  # passes documents on unchanged, slowly: time to kill the run part-way
        seconds: float = 0.0

        def map(self, doc):
            time.sleep(self.seconds)
            return doc

    from data_prep.__main__ import main
    if __name__ == "__main__":
        sys.exit(main(sys.argv[1:]))
""")


def test_killed_run_resumes_to_the_same_bytes(corpus, reference, tmp_path):
    manifest, _ = reference
    raw = raw_config(corpus, tmp_path / "out", tasks=4)
    raw["stages"] = [{"type": "sleep", "seconds": 0.15}] + raw["stages"]
    (tmp_path / "config.yaml").write_text(json.dumps(raw))  # JSON is YAML
    (tmp_path / "slow_cli.py").write_text(SLOW_CLI)
    cmd = [sys.executable, str(tmp_path / "slow_cli.py"), "--config", str(tmp_path / "config.yaml")]
    env = subprocess_env()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = tmp_path / "out" / ".work" / "stages" / "group-0"
    deadline = time.time() + 60
    while not (markers / "done-00001.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(markers.glob("done-*.json")))
    assert 2 <= done < 4 and not (tmp_path / "out" / "manifest.json").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming an unfinished run: {done} finished task(s) are skipped" in rerun.stdout
    resumed = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert resumed["splits"] == manifest["splits"] and resumed["tokenizer"] == manifest["tokenizer"]
    assert resumed["stages"][2:] == manifest["stages"][1:]  # the same counts after the extra sleep stage
    assert not (tmp_path / "out" / ".work").exists()


def test_other_input_discards_unfinished_work(corpus, tmp_path):
    """Stage work left by a failed run is reused only for the same sources, stages and files."""
    messages = []
    raw = raw_config(corpus, tmp_path / "out", tokenizer={"vocab_size": 100_000})
    with pytest.raises(Exception, match="SentencePiece could not train"):
        prepare(config_from_dict(raw), log=messages.append)
    assert (tmp_path / "out" / ".work" / "stages" / "group-1" / "done-00000.json").exists()
    raw["tokenizer"] = {"vocab_size": 400}  # fixing the tokenizer keeps the stage work
    prepare(config_from_dict(raw), overwrite=False, log=messages.append)
    assert any("resuming an unfinished run" in m for m in messages)
    raw["tokenizer"]["vocab_size"] = 100_000
    with pytest.raises(Exception):
        prepare(config_from_dict(raw), overwrite=True, log=quiet)
    raw["tokenizer"]["vocab_size"] = 400
    raw["stages"] = raw["stages"][1:]  # other stages: the old work is dropped, not mixed in
    raw["sources"] = raw["sources"][1:]
    messages.clear()
    m = prepare(config_from_dict(raw), overwrite=True, log=messages.append)
    assert not any("resuming" in x or "discarding" in x for x in messages)  # --overwrite starts afresh
    assert [s["stage"] for s in m["stages"]][1] == "unicode_fix"


def test_repeats_from_mixing_stay_in_their_original_split():
    cfg = config_from_dict({"output": "o", "sources": [{"name": "web", "type": "pydoc_topics"}],
                            "split": {"val_fraction": 0.5}})
    originals = [Document("x", f"web/f:{i}", "web") for i in range(40)]
    copies = [Document("x", f"{d.id}#rep1", "web", {"repeat": 1}) for d in originals]
    split = SplitStage(cfg)
    out = list(split(originals + copies, StageStats("split")))
    for original, copy in zip(out[:40], out[40:]):
        assert copy.meta["split"] == original.meta["split"] == ("val" if hash_fraction(0, original.id) < 0.5 else "train")
    assert {d.meta["split"] for d in out} == {"train", "val"}


@pytest.mark.parametrize("change, message", [
    ({"stages": [{"type": "gopher_qualty"}]}, "unknown stage type 'gopher_qualty'; did you mean 'gopher_quality'?"),
    ({"stages": [{"type": "gopher_quality", "min_word": 3}]}, "has no option 'min_word'; did you mean 'min_words'?"),
    ({"stages": [{"type": "exact_dedup"}, {"type": "exact_dedup"}]}, "two stages are named 'exact_dedup'"),
    ({"stages": [{"type": "unicode_fix", "name": "split"}]}, "the name 'split' is the pipeline's own step"),
    ({"stages": [{"type": "html_extract", "sources": ["webb"]}]}, "names source(s) ['webb'] that the config does not have"),
    ({"stages": [{"type": "mix", "weights": {"pages": 1, "books": 1}}]}, "names source(s) ['books']"),
    ({"stages": [{"type": "html_extract"}, {"type": "mix", "weights": {"pages": 1}}]},
     "stages.mix.weights has no weight for source(s) ['web']"),
    ({"stages": [{"type": "unicode_fix"}]}, "source 'pages' is html but no html_extract stage applies to it"),
    ({"stages": ["unicode_fix"]}, "'stages.0' must be a mapping, e.g. {type: gopher_quality}"),
    ({"tasks": -1}, "'tasks' must be >= 0"),
    ({"executor": {"kind": "spark"}}, "'executor.kind' must be one of 'local' | 'ray'"),
])
def test_stage_config_errors_fail_before_any_work(corpus, tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict({**raw_config(corpus, tmp_path / "out"), **change})
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_stage_overrides_and_mix_weights_from_sources(corpus, tmp_path):
    cfg = config_from_dict(raw_config(corpus, tmp_path / "out"),
                           ["stages.minhash_dedup.bands=20", "stages.1.normalization=NFKC", "sources.web.weight=3",
                            "stages.decontaminate.eval_sets.other=" + str(corpus / "evals.jsonl")])
    specs = {s["type"]: s for s in cfg.stages}
    assert specs["minhash_dedup"]["bands"] == 20 and specs["unicode_fix"]["normalization"] == "NFKC"
    assert specs["decontaminate"]["eval_sets"] == {"trivia": str(corpus / "evals.jsonl"), "other": str(corpus / "evals.jsonl")}
    assert specs["mix"]["weights"] == {"pages": 0.8, "web": 3.0}  # a mix without weights takes the sources'
    with pytest.raises(ConfigError, match="stage 'minhash_dedup' option 'bands' must be int"):
        config_from_dict(raw_config(corpus, tmp_path / "out"), ["stages.minhash_dedup.bands=many"])
