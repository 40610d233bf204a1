"""Executors: same bytes on every executor, reruns resume, odd input never kills a run."""

import functools
import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from data_prep.document import Document
from data_prep.executors import LocalExecutor, RayExecutor, marker_path, run_tasks
from data_prep.stages.files import read_documents, write_documents
from data_prep.stages.runner import WorkDirError, jsonl_input, run_stages
from tests.helpers import slow_jsonl_input, subprocess_env

WORDS = ("the of and to with that have river house garden stone window market bridge forest city "
         "winter summer letter story people water light music table school").split()


def specs(eval_file):
    return [{"type": "unicode_fix"}, {"type": "emoji"}, {"type": "gopher_quality"}, {"type": "gopher_repetition"},
            {"type": "exact_dedup"}, {"type": "minhash_dedup"},
            {"type": "decontaminate", "eval_sets": {"evals": str(eval_file)}},
            {"type": "mix", "weights": {"web": 0.7, "books": 0.3}}]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 input files: prose documents with exact and near copies spread over files, and one eval set."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 200))) + "." for _ in range(300)]
    texts += texts[:30]  # exact copies
    texts += [t.replace(" river ", " brook ", 1) + " \U0001f600" for t in texts[30:60]]  # near copies
    paths = []
    for f in range(8):
        docs = [Document(t, f"{'web' if f < 6 else 'books'}/f{f}.jsonl:{i}", "web" if f < 6 else "books")
                for i, t in enumerate(texts[f::8])]
        paths.append(root / f"f{f}.jsonl")
        write_documents(paths[-1], docs)
    eval_file = root / "evals.txt"
    eval_file.write_text(texts[5] + "\n\n" + texts[77])
    return paths, eval_file


def outputs(result):
    return [p.read_bytes() for p in result.outputs]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    paths, eval_file = corpus
    return run_stages(specs(eval_file), jsonl_input(paths), 4, tmp_path_factory.mktemp("ref"), LocalExecutor(1))


def test_reference_run_removes_what_it_should(reference):
    by_stage = {s.stage: s for s in reference.stats}
    assert by_stage["exact_dedup"].removed["exact_dedup:exact_duplicate"] >= 25  # 30 copies, a few too short
    assert by_stage["minhash_dedup"].removed["minhash_dedup:near_duplicate"] >= 25
    assert by_stage["decontaminate"].counters["docs_hit:evals"] >= 2
    for s in reference.stats:  # every document is accounted for
        repeats = sum(v for k, v in s.counters.items() if k.startswith("repeated_docs:"))
        assert s.docs_out == s.docs_in - s.docs_removed + repeats


def test_process_pool_gives_the_same_bytes(corpus, reference, tmp_path):
    paths, eval_file = corpus
    with LocalExecutor(2) as pool:
        result = run_stages(specs(eval_file), jsonl_input(paths), 4, tmp_path, pool)
    assert outputs(result) == outputs(reference)
    assert [s.to_json() for s in result.stats] == [s.to_json() for s in reference.stats]


@pytest.mark.slow  # ~20 s; the default suite runs Ray end to end in test_data_prep_stages_pipeline.py
def test_ray_gives_the_same_bytes(corpus, reference, tmp_path):
    ray = pytest.importorskip("ray")

    paths, eval_file = corpus
    try:
        executor = RayExecutor(num_cpus=2)
        result = run_stages(specs(eval_file), jsonl_input(paths), 4, tmp_path, executor)
    finally:
        ray.shutdown()
    assert outputs(result) == outputs(reference)
    assert [s.to_json() for s in result.stats] == [s.to_json() for s in reference.stats]


KILL_SCRIPT = textwrap.dedent(f"""
    import functools, sys
    from data_prep.executors import LocalExecutor
    from data_prep.stages.runner import run_stages
    from tests.helpers import slow_jsonl_input
    from {__name__} import specs
    if __name__ == "__main__":
        paths, eval_file, work = sys.argv[1:-2], sys.argv[-2], sys.argv[-1]
        run_stages(specs(eval_file), functools.partial(slow_jsonl_input, paths, 0.4), 4, work, LocalExecutor(1))
""")


@pytest.mark.parametrize("kill_after_rank", [1, 3])  # mid-group, or between the dedup map and reduce
def test_killed_run_resumes_to_the_same_output(corpus, reference, tmp_path, kill_after_rank):
    paths, eval_file = corpus
    work = tmp_path / "work"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, str(script), *map(str, paths), str(eval_file), str(work)], env=env)
    deadline = time.time() + 60
    while not marker_path(work / "group-0", kill_after_rank).exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    group = work / "group-0"
    done = {p.name: p.stat().st_mtime_ns for p in group.glob("done-*.json")}
    assert kill_after_rank + 1 <= len(done) <= kill_after_rank + 2
    assert not (work / "group-3" / "done-00000.json").exists()  # the run did not finish
    resumed = run_stages(specs(eval_file), functools.partial(slow_jsonl_input, [str(p) for p in paths], 0.0), 4,
                         work, LocalExecutor(1))
    assert {p.name: p.stat().st_mtime_ns for p in group.glob("done-*.json") if p.name in done} == done  # skipped
    assert outputs(resumed) == outputs(reference)
    assert [s.to_json() for s in resumed.stats] == [s.to_json() for s in reference.stats]
    ids = [d.id for p in resumed.outputs for d in read_documents(p)]
    assert len(ids) == len(set(ids))


def test_run_tasks_skips_marked_ranks(tmp_path):
    calls = []
    first = run_tasks(LocalExecutor(1), lambda r: calls.append(r) or {"rank": r}, 3, tmp_path)
    marker_path(tmp_path, 1).unlink()
    second = run_tasks(LocalExecutor(1), lambda r: calls.append(r) or {"rank": r, "again": True}, 3, tmp_path)
    assert calls == [0, 1, 2, 1]
    assert first == [{"rank": 0}, {"rank": 1}, {"rank": 2}]
    assert second == [{"rank": 0}, {"rank": 1, "again": True}, {"rank": 2}]


def test_a_work_dir_belongs_to_one_run(corpus, tmp_path):
    paths, eval_file = corpus
    run_stages([{"type": "unicode_fix"}], jsonl_input(paths), 2, tmp_path, LocalExecutor(1))
    with pytest.raises(WorkDirError, match="other stages or world size"):
        run_stages([{"type": "emoji"}], jsonl_input(paths), 2, tmp_path, LocalExecutor(1))


FINE = """The town council met on Tuesday evening to discuss the new library.
Several residents spoke in favour of longer opening hours at weekends.
Others worried that the budget would not cover the extra staff it needs.
After a long debate, the members agreed to run a trial for six months.
The results will be reviewed at the first meeting of the new year.
Everyone thanked the volunteers who had organised the public survey."""


def odd_documents(long_line_bytes):
    rng = random.Random(0)
    binary = bytes(rng.randrange(256) for _ in range(20_000)).decode("utf-8", "surrogateescape")
    return [Document(binary, "odd/binary.bin:1", "web"),
            Document("", "odd/empty.txt:1", "web"),
            Document("   \n\t ", "odd/blank.txt:1", "web"),
            Document("\x00" * 1000, "odd/nul.txt:1", "web"),
            Document("!?" * 500, "odd/punct.txt:1", "web"),
            Document(("word " * (long_line_bytes // 5)).strip(), "odd/long.txt:1", "web"),
            Document("\U0001f600" * 100, "odd/emoji.txt:1", "web"),
            Document(FINE, "odd/fine.txt:1", "web")]


def run_odd(tmp_path, long_line_bytes):
    docs = odd_documents(long_line_bytes)
    write_documents(tmp_path / "odd.jsonl", docs)
    eval_file = tmp_path / "evals.txt"
    eval_file.write_text("nothing in the corpus looks like this evaluation paragraph at all today")
    spec = specs(eval_file)[:-1] + [{"type": "c4"}, {"type": "fineweb_quality"}, {"type": "language"}]
    result = run_stages(spec, jsonl_input([tmp_path / "odd.jsonl"]), 1, tmp_path / "work", LocalExecutor(1))
    removed = {}
    for s in result.stats:
        for reason, ids in s.examples.items():
            for i in ids:
                removed[i] = reason
    return docs, result, removed


def test_odd_input_is_counted_never_fatal(tmp_path):
    """Binary junk, empty and blank documents, a single 100 MB line: each removed with its reason."""
    docs, result, removed = run_odd(tmp_path, 100_000_000)
    assert result.stats[0].bytes_in >= 100_000_000
    assert result.stats[0].docs_in == len(docs)
    assert removed == {"odd/binary.bin:1": "gopher_quality:mean_word_length", "odd/empty.txt:1": "unicode_fix:empty",
                       "odd/blank.txt:1": "unicode_fix:empty", "odd/nul.txt:1": "unicode_fix:empty",
                       "odd/punct.txt:1": "gopher_quality:word_count", "odd/long.txt:1": "gopher_quality:word_count",
                       "odd/emoji.txt:1": "gopher_quality:word_count"}
    survivors = [d.id for p in result.outputs for d in read_documents(p)]
    assert survivors == ["odd/fine.txt:1"]
    logged = {}
    for path in (tmp_path / "work").glob("group-*/removed-*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            logged[row["id"]] = row["reason"]
    assert logged == removed  # every removal is logged with its reason, not only the examples
    total_removed = sum(s.docs_removed for s in result.stats)
    assert total_removed + len(survivors) == len(docs)


def reader_with_bad_lines(rank, world_size, stats):
    """A reader that meets a malformed line and repairs another, as data_prep.sources does."""
    stats.skip("malformed_json", f"in/{rank}.jsonl:2")
    stats.repair("invalid_utf8", f"in/{rank}.jsonl:3", 2)
    yield Document(FINE, f"in/{rank}.jsonl:1", "web")
    yield Document(FINE + " Again.", f"in/{rank}.jsonl:3", "web")


def test_reader_drops_are_reported_with_file_and_line(tmp_path):
    result = run_stages([{"type": "exact_dedup"}], reader_with_bad_lines, 2, tmp_path, LocalExecutor(1))
    read = result.read
    assert (read.docs_in, read.docs_out) == (6, 4)
    assert read.removed == {"read:malformed_json": 2}
    assert read.examples["read:malformed_json"] == ["in/0.jsonl:2", "in/1.jsonl:2"]
    assert read.counters == {"repaired:invalid_utf8": 4}
    assert [s.stage for s in result.all_stats] == ["read", "exact_dedup"]
    assert result.stats[0].removed == {"exact_dedup:exact_duplicate": 2}
    logged = sorted((tmp_path / "group-0").glob("removed-*.jsonl"))
    assert [json.loads(line) for line in logged[1].read_text().splitlines()] == [
        {"id": "in/1.jsonl:2", "reason": "read:malformed_json"}]
