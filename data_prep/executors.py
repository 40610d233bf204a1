"""Run N file-sharded tasks addressed by (rank, world_size), on local processes or on Ray.

A task is a picklable callable `task(rank) -> dict` (JSON-able) that writes its outputs
atomically. `run_tasks` skips ranks that have a completion marker, runs the rest on an
executor, and writes each marker (the task's result) only after the task returned, so a run
killed at any point and started again redoes exactly the unfinished tasks. Tasks are pure
functions of their rank, so every executor writes the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import pathlib
from typing import Any, Callable, Protocol, Sequence

from data_prep.errors import DataPrepError
from data_prep.stages.files import atomic_write_json, read_json

Task = Callable[[int], dict]


class ExecutorError(DataPrepError, RuntimeError):
    """The executor could not run (e.g. Ray missing or unreachable); the message says what to do."""


def cores() -> int:
    """Cores this process may use (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Executor(Protocol):
    def map(self, fn: Callable[[int], Any], items: Sequence[int]) -> list[Any]:
        """fn(item) for every item, results in item order; raises the first task error."""

    def close(self) -> None:
        """Release workers."""


class LocalExecutor:
    """A process pool on this machine; `workers=None` uses every core, 1 runs in-process.

    The pool starts on first use and is kept for later calls (close() ends it). Workers are
    spawned, not forked, so they start clean as Ray's do; as with any spawn pool, a script
    that uses it needs an `if __name__ == "__main__":` guard.
    """

    def __init__(self, workers: int | None = None):
        self.workers = workers or cores()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def map(self, fn, items):
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            return [fn(i) for i in items]
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"))
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"LocalExecutor(workers={self.workers})"


def _call(fn, item):
    return fn(item)


class RayExecutor:
    """Tasks as Ray remote functions: `address=None` starts Ray on this machine (as tests do),
    "auto" or "ray://host:port" joins a cluster. On a cluster, the work directory and inputs
    must be on storage every node sees."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: float = 1.0):
        try:
            import ray
        except ImportError:
            raise ExecutorError("the Ray executor needs ray: pip install 'jaxlm[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            repo = str(pathlib.Path(__file__).resolve().parents[1])
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}}
            try:
                ray.init(address=address, num_cpus=num_cpus if address is None else None,
                         include_dashboard=False, runtime_env=env, logging_level="warning",
                         log_to_driver=True)
            except ConnectionError as e:
                raise ExecutorError(f"cannot reach the Ray cluster at {address!r}: {e}") from None
        self._remote = ray.remote(num_cpus=cpus_per_task)(_call)

    def map(self, fn, items):
        fn_ref = self._ray.put(fn)
        try:
            return self._ray.get([self._remote.remote(fn_ref, i) for i in items])
        except self._ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, DataPrepError):  # a user's error: its message, not a remote traceback
                raise e.cause from None
            raise

    def close(self) -> None:
        """Leaves Ray running (other code may share it); ray.shutdown() stops it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "RayExecutor()"


def marker_path(done_dir: str | os.PathLike, rank: int) -> pathlib.Path:
    return pathlib.Path(done_dir) / f"done-{rank:05d}.json"


def _run_and_mark(task: Task, done_dir: str, rank: int) -> dict:
    result = task(rank)
    atomic_write_json(marker_path(done_dir, rank), result)  # last: the outputs are already in place
    return result


def run_tasks(executor: Executor, task: Task, world_size: int, done_dir: str | os.PathLike) -> list[dict]:
    """Run `task` for every rank without a completion marker in `done_dir`; return every rank's
    result (read back from the markers) in rank order."""
    pending = [r for r in range(world_size) if not marker_path(done_dir, r).exists()]
    if pending:
        pathlib.Path(done_dir).mkdir(parents=True, exist_ok=True)
        executor.map(functools.partial(_run_and_mark, task, str(done_dir)), pending)
    return [read_json(marker_path(done_dir, r)) for r in range(world_size)]


def make_executor(kind: str = "local", workers: int | None = None, address: str | None = None) -> Executor:
    """The executor a config names: "local" (default) or "ray"."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=workers)
    raise ExecutorError(f"unknown executor {kind!r}; use 'local' or 'ray'")
