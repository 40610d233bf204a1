"""Throughput of data_prep's stages, one by one and as a whole pipeline, on real text.

Corpus: the Python documentation Debian ships in `python3-doc` (`apt-get install -y python3-doc`
puts ~50 MB of HTML under /usr/share/doc/python3.X/html and ~11 MB of reST sources under its
_sources/): two sources, "docs_html" (HTML pages, through html_extract) and "docs_rst" (text).
Evaluation sets for decontamination and the quality classifier's reference text come from
../shared/data when present (those stages are skipped otherwise).

Per stage: one process, MB/s per core = stage input bytes / CPU seconds (global stages: map +
reduce + apply). Whole pipeline: `run_stages` on a process pool over all cores; MB/s per core =
input bytes / (wall seconds x cores), and per CPU second of all workers.

    python benchmarks/pipeline_throughput.py [--docs DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import pathlib
import resource
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.document import Document  # noqa: E402
from data_prep.executors import LocalExecutor  # noqa: E402
from data_prep.stages import GlobalStage, StageStats, build_stages, counted  # noqa: E402
from data_prep.stages.base import text_bytes  # noqa: E402
from data_prep.stages.runner import run_stages  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"


def find_docs(root: str | None) -> pathlib.Path | None:
    candidates = [root] if root else sorted(glob.glob("/usr/share/doc/python3*/html"))
    for c in candidates:
        path = pathlib.Path(c).resolve()
        if (path / "index.html").is_file():
            return path
    return None


def corpus_files(docs: pathlib.Path) -> list[tuple[str, str]]:
    """(source, path) of every page and reST source, in a fixed order."""
    html = sorted(p for p in docs.rglob("*.html") if "_sources" not in p.parts)
    rst = sorted((docs / "_sources").rglob("*.txt"))
    return [("docs_html", str(p)) for p in html] + [("docs_rst", str(p)) for p in rst]


def read_files(files: list[tuple[str, str]], root: str, rank: int, world_size: int, stats=None):
    """read_input for run_stages: rank r reads files r, r+W, ... (a file is one document)."""
    for source, path in files[rank::world_size]:
        text = pathlib.Path(path).read_bytes().decode("utf-8", "replace")
        yield Document(text, f"{source}/{os.path.relpath(path, root)}:1", source)


def stage_specs(data: pathlib.Path) -> list[dict]:
    """Every stage type. Dedup, decontamination and the classifier come before C4's line rules
    here, which strip most of this code-heavy corpus, so that they are measured on ~15 MB."""
    specs = [{"type": "html_extract", "sources": ["docs_html"]}, {"type": "unicode_fix"}, {"type": "emoji"},
             {"type": "language"}, {"type": "gopher_quality"}, {"type": "gopher_repetition"},
             {"type": "exact_dedup"}, {"type": "minhash_dedup"}]
    evals = data / "eval" / "llm_foundry"
    if evals.is_dir():
        specs.append({"type": "decontaminate", "eval_sets": {
            "lambada": str(evals / "language_understanding" / "lambada_openai.jsonl"),
            "arc_easy": str(evals / "world_knowledge" / "arc_easy.jsonl"),
            "boolq": str(evals / "reading_comprehension" / "boolq.jsonl")}})
    wiki = data / "text" / "wikitext-2" / "wiki.valid.tokens"
    if wiki.is_file():
        specs.append({"type": "quality_classifier", "reference": [str(wiki)], "sample_rate": 0.5,
                      "action": "annotate"})
    specs += [{"type": "c4"}, {"type": "fineweb_quality"}]
    if (data / "bias" / "ldnoobw" / "en").is_file():
        specs.append({"type": "blocklist", "path": str(data / "bias" / "ldnoobw" / "en")})
    specs.append({"type": "mix", "weights": {"docs_html": 0.7, "docs_rst": 0.3}})
    return specs


def per_stage(specs: list[dict], docs: list[Document]) -> list[tuple[str, StageStats, float, float]]:
    """Run each stage over the whole list in this process: (name, stats, CPU seconds of the
    per-document work (map + apply), CPU seconds of the one-off reduce: index, training, ...)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in build_stages(specs):
            stats = StageStats(stage.name)
            start, once = time.process_time(), 0.0
            if isinstance(stage, GlobalStage):
                state = pathlib.Path(tmp) / stage.name
                state.mkdir()
                if stage.has_map:
                    docs = list(stage.map_task(docs, 0, state))
                reduce_start = time.process_time()
                stage.reduce(state, 1)
                stage.load(state, 0)
                once = time.process_time() - reduce_start
            docs = list(counted(stage, docs, stats))
            rows.append((stage.name, stats, time.process_time() - start - once, once))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", help="the python3-doc html folder (default: /usr/share/doc/python3*/html)")
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    root = find_docs(args.docs)
    if root is None:
        print("SKIPPED: no Python documentation HTML found; install it with `apt-get install -y python3-doc` "
              "(or pass --docs DIR)")
        return
    files = corpus_files(root)
    docs = list(read_files(files, str(root), 0, 1))
    megabytes = sum(text_bytes(d.text) for d in docs) / 1e6
    specs = stage_specs(args.data)
    cores = os.cpu_count() or 1
    print(f"corpus: {root} -> {len(docs)} documents, {megabytes:.1f} MB "
          f"({sum(d.source == 'docs_html' for d in docs)} HTML pages, {sum(d.source == 'docs_rst' for d in docs)} reST files)")
    print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.1f} (a shared machine inflates wall times)\n")

    print(f"{'stage':20s} {'docs in':>8s} {'docs out':>8s} {'MB in':>7s} {'MB out':>7s} {'cpu s':>7s} "
          f"{'MB/s/core':>10s} {'reduce s':>9s}")
    total_cpu = 0.0
    for name, stats, cpu, once in per_stage(specs, docs):
        total_cpu += cpu + once
        print(f"{name:20s} {stats.docs_in:8d} {stats.docs_out:8d} {stats.bytes_in / 1e6:7.2f} "
              f"{stats.bytes_out / 1e6:7.2f} {cpu:7.2f} {stats.bytes_in / 1e6 / max(cpu, 1e-9):10.2f} {once:9.2f}")
    print(f"{'all, 1 process':20s} {'':8s} {'':8s} {megabytes:7.2f} {'':7s} {total_cpu:7.2f} "
          f"{megabytes / total_cpu:10.2f}   (reduce included)")
    print("(cpu s / MB/s per core: per-document work; reduce s: one-off work, e.g. the 13-gram index "
          "or training the classifier)\n")

    world_size = 4 * cores
    with tempfile.TemporaryDirectory() as work:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        with LocalExecutor(cores) as pool:
            result = run_stages(specs, functools.partial(read_files, files, str(root)), world_size, work, pool)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        out = result.stats[-1]
    print(f"whole pipeline: run_stages, {cores} worker processes, {world_size} tasks: {wall:.1f} s wall, "
          f"{cpu:.1f} CPU s in workers")
    print(f"  {megabytes:.1f} MB in -> {out.docs_out} documents, {out.bytes_out / 1e6:.1f} MB out")
    print(f"  {megabytes / wall / cores:.2f} MB/s per core (wall x cores), {megabytes / cpu:.2f} MB/s per worker CPU second")


if __name__ == "__main__":
    main()
