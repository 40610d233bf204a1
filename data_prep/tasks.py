"""The document stream before the split: sources read as file-sharded tasks, the config's stages
run over them on an executor, and the tasks' outputs read back in one fixed order.

Task `rank` of `world_size` reads every world_size-th file of each source, from file `rank` on
(stages/runner.py runs the stages per task, global stages as map -> reduce -> apply). Every
document carries meta["order"] = [source position, file index]; `merged` reads the outputs back
sorted by it, so the stream, and with it the shards, is the same whatever the number of tasks,
the executor or the number of workers.

Work files live under `work_dir` with completion markers. A run killed part-way and started again
with the same sources, stages and input files redoes only the unfinished tasks; with anything
else the old work is discarded.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import heapq
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Iterator

from data_prep import sources
from data_prep.config import FILE_SOURCE_TYPES, Config
from data_prep.document import Document
from data_prep.executors import cores, make_executor
from data_prep.stages.files import atomic_write_json, read_documents, read_json
from data_prep.stages.runner import RunResult, run_stages
from data_prep.stats import StageStats, text_bytes


def read_task(cfg: Config, files: dict[str, list[str]], rank: int, world_size: int,
              stats: StageStats) -> Iterator[Document]:
    """Task `rank`'s documents; module-level so that it pickles to any executor's workers.

    Counts documents and bytes per source (counters "documents:<source>", "bytes:<source>").
    """
    for position, src in enumerate(cfg.sources):
        paths = files[src.name]
        names = sources.file_names(src, paths)
        for index in range(rank, len(paths), world_size):
            for doc in sources.read_file(src, paths[index], names[index], stats):
                doc.meta["order"] = [position, index]
                stats.count(f"documents:{src.name}")
                stats.count(f"bytes:{src.name}", text_bytes(doc.text))
                yield doc


def task_count(cfg: Config) -> int:
    return cfg.tasks or cfg.workers or cores()


def run(cfg: Config, files: dict[str, list[str]], work_dir: str, log: Callable[[str], None] = print) -> RunResult:
    """Reads every source and runs `cfg.stages` as `task_count(cfg)` tasks; resumes a killed run."""
    world_size = task_count(cfg)
    work = pathlib.Path(work_dir)
    _claim(work, _fingerprint(cfg, files, world_size), log)
    done = len(list(work.glob("group-*/done-*.json")))
    if done:
        log(f"resuming an unfinished run: {done} finished task(s) are skipped")
    workers = cfg.workers or cores()
    with make_executor(cfg.executor.kind, workers, cfg.executor.address) as executor:
        return run_stages(cfg.stages, functools.partial(read_task, cfg, files), world_size, work, executor)


def merged(result: RunResult) -> Iterator[Document]:
    """The tasks' output documents in source order, then file order, then their order in the file."""
    return heapq.merge(*(read_documents(p) for p in result.outputs), key=lambda d: d.meta["order"])


def write_removal_log(work_dir: str, path: str) -> int:
    """Gathers every task's removals ({"id": doc id or "file:line", "reason": ...} per line) into one
    gzipped JSONL file; returns the number of lines."""
    lines = 0
    work = pathlib.Path(work_dir)
    groups = sorted(work.glob("group-*"), key=lambda p: int(p.name.split("-")[1]))
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for group in groups:
            for part in sorted(group.glob("removed-*.jsonl")):
                data = part.read_bytes()
                lines += data.count(b"\n")
                f.write(data)
    os.replace(tmp, path)
    return lines


def _fingerprint(cfg: Config, files: dict[str, list[str]], world_size: int) -> dict:
    """What the stage outputs depend on: sources, stages, task count, and each input file's size and time."""

    def stat(src, path):
        if src.type not in FILE_SOURCE_TYPES:
            return [path]
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]

    return json.loads(json.dumps({
        "python": sys.version,  # the built-in corpora come with it
        "sources": [dataclasses.asdict(s) for s in cfg.sources],
        "stages": cfg.stages,
        "tasks": world_size,
        "files": {s.name: [stat(s, p) for p in files[s.name]] for s in cfg.sources},
    }))


def _claim(work: pathlib.Path, fingerprint: dict, log: Callable[[str], None]) -> None:
    marker = work / "input.json"
    if work.exists() and (not marker.exists() or read_json(marker) != fingerprint):
        log(f"discarding the unfinished work in {work}: it was made from other sources, stages or input files")
        shutil.rmtree(work)
    if not marker.exists():
        atomic_write_json(marker, fingerprint)

