"""Run a list of stage specs over file-sharded tasks, with global stages as map -> reduce -> apply.

The stage list is cut into groups at every global stage that has a map step; each group is
one set of `world_size` tasks (rank r reads group g-1's output r, or `read_input(r, W)` for
the first group), and the global stage's map runs fused at the end of the group before it:

    [clean, filters..., dedup.map] -> dedup.reduce -> [dedup.apply, ..., mix.map] -> mix.reduce -> [mix.apply]

Layout under `work_dir`:
    group-<g>/docs-<rank>.jsonl   documents after group g (the last group's are the output)
    group-<g>/removed-<rank>.jsonl  every document the group removed: {"id", "reason"} per line
    group-<g>/done-<rank>.json    completion marker: that task's per-stage StageStats
    state/<stage>/...             global stages' map and reduce state; reduce.json = its report
    stats.json                    merged StageStats of every stage and every reduce report
    plan.json                     the specs and world size; a rerun with others is refused
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Callable, Iterable, Iterator

from data_prep.document import Document
from data_prep.errors import DataPrepError, StageFailed
from data_prep.executors import Executor, LocalExecutor, marker_path, run_tasks
from data_prep.stages.base import GlobalStage, Stage, StageStats, check_error_share, counted, text_bytes
from data_prep.stages.files import (atomic_write_bytes, atomic_write_json, read_documents, read_json,
                                    write_documents)
from data_prep.stages.registry import StageConfigError, build_stages

# read_input(rank, world_size, stats) -> rank's documents; the reader records what it drops or
# repairs on `stats` (a StageStats named "read"): stats.skip(rule, "file:line"), stats.repair(...).
ReadInput = Callable[[int, int, StageStats], Iterable[Document]]
READ = "read"


@dataclasses.dataclass
class RunResult:
    outputs: list[pathlib.Path]  # final documents, one JSONL file per rank
    read: StageStats  # what the reader passed on, dropped ("read:<rule>") and repaired
    stats: list[StageStats]  # every stage's, merged over tasks, in pipeline order
    reports: dict[str, dict[str, Any]]  # reduce report per global stage name

    @property
    def all_stats(self) -> list[StageStats]:
        """Reading then every stage: what the manifest and report.md show."""
        return [self.read, *self.stats]


def plan_groups(stages: list[Stage]) -> list[list[int]]:
    """Stage indices per task group; a new group starts after each global stage with a map."""
    groups: list[list[int]] = [[]]
    for i, stage in enumerate(stages):
        if isinstance(stage, GlobalStage) and stage.has_map:
            groups.append([])
        groups[-1].append(i)
    return groups


def _state_dir(work_dir: pathlib.Path, stage: Stage) -> pathlib.Path:
    path = work_dir / "state" / stage.name
    path.mkdir(parents=True, exist_ok=True)
    return path


def group_output(work_dir: str | pathlib.Path, group: int, rank: int) -> pathlib.Path:
    return pathlib.Path(work_dir) / f"group-{group}" / f"docs-{rank:05d}.jsonl"


@dataclasses.dataclass(frozen=True)
class GroupTask:
    """One group of stages for one rank; picklable, so it runs in any executor's worker."""

    specs: list[dict[str, Any]]
    members: list[int]  # stage indices in this group
    group: int
    next_map: int | None  # the global stage whose map runs at the end of this group
    work_dir: str
    world_size: int
    read_input: ReadInput | None  # first group only

    def __call__(self, rank: int) -> dict[str, Any]:
        work_dir = pathlib.Path(self.work_dir)
        stages = build_stages(self.specs)
        stats, removals = [], []
        if self.read_input is not None:
            stats.append(StageStats(READ, log=removals))
            docs = _counted_out(self.read_input(rank, self.world_size, stats[0]), stats[0])
        else:
            docs = read_documents(group_output(work_dir, self.group - 1, rank))
        for i in self.members:
            stage = stages[i]
            if isinstance(stage, GlobalStage):
                stage.load(_state_dir(work_dir, stage), rank)
            stats.append(StageStats(stage.name, log=removals))
            docs = counted(stage, docs, stats[-1])
        if self.next_map is not None:
            stage = stages[self.next_map]
            docs = stage.map_task(docs, rank, _state_dir(work_dir, stage))
        written = write_documents(group_output(work_dir, self.group, rank), docs)
        if self.read_input is not None:  # the reader's input is what it passed on plus what it dropped
            stats[0].docs_in, stats[0].bytes_in = stats[0].docs_out + stats[0].docs_removed, stats[0].bytes_out
        removed = "".join(json.dumps({"id": i, "reason": r}, ensure_ascii=False) + "\n" for i, r in removals)
        atomic_write_bytes(group_output(work_dir, self.group, rank).with_name(f"removed-{rank:05d}.jsonl"),
                           removed.encode("utf-8", "backslashreplace"))
        return {"documents": written, "stats": [s.to_json() for s in stats]}


def _counted_out(docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
    for doc in docs:
        stats.docs_out += 1
        stats.bytes_out += text_bytes(doc.text)
        yield doc


def _reduce(stage: GlobalStage, work_dir: pathlib.Path, world_size: int) -> dict[str, Any]:
    state = _state_dir(work_dir, stage)
    marker = state / "reduce.json"
    if not marker.exists():
        atomic_write_json(marker, stage.reduce(state, world_size))
    return read_json(marker)


class WorkDirError(DataPrepError, ValueError):
    """The work directory holds another run's state."""


def _claim(work_dir: pathlib.Path, specs: list[dict[str, Any]], world_size: int) -> None:
    """Record what this work directory is for; a rerun must be the same run, or markers would lie."""
    plan = {"specs": specs, "world_size": world_size}
    path = work_dir / "plan.json"
    if path.exists():
        if read_json(path) != json.loads(json.dumps(plan)):
            raise WorkDirError(
                f"{work_dir} holds a run with other stages or world size; resuming it would mix "
                f"results. Use a new work directory, or delete this one to start over.")
    else:
        atomic_write_json(path, plan)


def run_stages(specs: list[dict[str, Any]], read_input: ReadInput, world_size: int,
               work_dir: str | pathlib.Path, executor: Executor | None = None) -> RunResult:
    """Run `specs` over `world_size` tasks; finished tasks and reduces are skipped on a rerun.

    `read_input(rank, world_size, stats)` yields rank's input documents and records what it
    drops on `stats` (see ReadInput); it must be picklable (a module-level function or a
    functools.partial of one) and deterministic, as must the specs' files.
    """
    stages = build_stages(specs)  # fails fast on a bad spec, before any work
    if any(s.name == READ for s in stages):
        raise StageConfigError(f"a stage may not be named {READ!r} (reading is reported under that name)")
    if executor is None:
        with LocalExecutor() as local:
            return run_stages(specs, read_input, world_size, work_dir, local)
    work_dir = pathlib.Path(work_dir)
    _claim(work_dir, specs, world_size)
    groups = plan_groups(stages)
    reports: dict[str, dict[str, Any]] = {}
    for stage in stages:  # global stages without a map (decontamination) reduce up front
        if isinstance(stage, GlobalStage) and not stage.has_map:
            reports[stage.name] = _reduce(stage, work_dir, world_size)
    merged: dict[str, StageStats] = {}
    for g, members in enumerate(groups):
        next_map = groups[g + 1][0] if g + 1 < len(groups) else None
        task = GroupTask(specs=specs, members=members, group=g, next_map=next_map, work_dir=str(work_dir),
                         world_size=world_size, read_input=read_input if g == 0 else None)
        done_dir = work_dir / f"group-{g}"
        for result in run_tasks(executor, task, world_size, done_dir):
            for data in result["stats"]:
                part = StageStats.from_json(data)
                merged.setdefault(part.stage, StageStats(part.stage)).merge(part)
        try:
            for stage in (stages[i] for i in members):
                check_error_share(merged.get(stage.name, StageStats(stage.name)))
        except StageFailed:  # the group's output lacks the failed documents: a rerun redoes it
            for rank in range(world_size):
                marker_path(done_dir, rank).unlink(missing_ok=True)
            raise
        if next_map is not None:
            stage = stages[next_map]
            reports[stage.name] = _reduce(stage, work_dir, world_size)
    result = RunResult(outputs=[group_output(work_dir, len(groups) - 1, r) for r in range(world_size)],
                       read=merged.get(READ, StageStats(READ)),
                       stats=[merged.get(s.name, StageStats(s.name)) for s in stages], reports=reports)
    atomic_write_json(work_dir / "stats.json", {"stages": [s.to_json() for s in result.all_stats],
                                                "reports": reports})
    return result


def read_jsonl_shards(paths: list[str], rank: int, world_size: int, stats: StageStats) -> Iterable[Document]:
    """A `read_input` over JSONL files of `write_documents`: rank r reads files r, r+W, r+2W, ..."""
    for path in paths[rank::world_size]:
        yield from read_documents(path)


def jsonl_input(paths: list[str]) -> ReadInput:
    return functools.partial(read_jsonl_shards, [str(p) for p in paths])
