"""Helpers for the stage tests: run one stage spec over hand-made texts."""

from data_prep.document import Document
from data_prep.stages import StageStats, build_stage, counted


def docs_of(*texts, source="web"):
    return [Document(text=t, id=f"{source}/t.txt:{i}", source=source) for i, t in enumerate(texts)]


def run_stage(spec, docs):
    stage = build_stage(spec)
    stats = StageStats(stage.name)
    return list(counted(stage, docs, stats)), stats


def kept(spec, *texts):
    out, _ = run_stage(spec, docs_of(*texts))
    return [d.text for d in out]


def reason(spec, text):
    """The removal reason for one text, or None if it is kept."""
    out, stats = run_stage(spec, docs_of(text))
    if out:
        return None
    (r,) = stats.removed
    return r


def slow_jsonl_input(paths, delay, rank, world_size, stats):
    """A `read_input` that dawdles per task, so a test can kill a run part-way through."""
    import time

    from data_prep.stages.runner import read_jsonl_shards

    time.sleep(delay)
    yield from read_jsonl_shards(paths, rank, world_size, stats)
