"""The stage interface: a stage turns a stream of Documents into a stream of Documents.

Every removal is counted in `StageStats` under a reason string ("<stage>:<rule>") with a few
example document ids, so the report can say why each document left and where it came from.
Stages that must see every task's documents before deciding (dedup, mixing, the quality
classifier, decontamination's index) are `GlobalStage`s: map (per task) -> reduce (once) ->
apply (per task).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Iterable, Iterator

from data_prep.document import Document
from data_prep.errors import StageFailed
from data_prep.stats import StageStats, text_bytes  # noqa: F401  (re-exported: stages import them from here)

log = logging.getLogger(__name__)

# A document a stage raises on is dropped and counted as "<stage>:error:<Type>", so one odd
# document cannot kill a job. More than this share of a stage's documents failing is a bug in the
# stage, and dropping them would silently delete the corpus: the run stops instead (checked while
# a task streams once it has seen ERROR_CHECK_AFTER documents, and over all tasks at the end).
MAX_ERROR_SHARE = 0.01
ERROR_CHECK_AFTER = 1000


def error_count(stats: StageStats) -> int:
    """Documents the stage raised on."""
    return sum(n for reason, n in stats.removed.items() if reason.startswith(f"{stats.stage}:error:"))


def check_error_share(stats: StageStats, last_error: BaseException | None = None) -> None:
    """Raises StageFailed when more than MAX_ERROR_SHARE of the stage's documents raised."""
    errors = error_count(stats)
    if errors and errors > MAX_ERROR_SHARE * stats.docs_in:
        reasons = {r: n for r, n in stats.removed.items() if r.startswith(f"{stats.stage}:error:")}
        examples = [i for r in reasons for i in stats.examples.get(r, [])][:3]
        first = f" (last: {last_error!r})" if last_error is not None else ""
        raise StageFailed(
            f"stage {stats.stage!r} raised on {errors} of {stats.docs_in} documents{first}: {reasons}, e.g. "
            f"{examples}. More than {MAX_ERROR_SHARE:.0%} failing is a bug in the stage or its settings, "
            "not odd documents, so the run stops rather than drop them; the log has each error. Fix the "
            "stage and rerun.")


def _failed(stage: Stage, doc: Document, error: Exception, stats: StageStats) -> None:
    log.warning("%s failed on %s: %r", stage.name, doc.id, error)
    stats.remove(doc, f"error:{type(error).__name__}")
    if stats.docs_in >= ERROR_CHECK_AFTER:
        check_error_share(stats, error)


class Drop(Exception):
    """Raised by `Mapper.map` to remove a document; the message is the rule name."""


class Stage:
    """One concern. Subclasses are dataclasses whose fields are the config keys."""

    name: str = "stage"  # set per instance by the registry (the spec's `name`, else its `type`)
    sources: frozenset[str] | None = None  # per-document stages: only these sources (spec `sources`)

    def applies_to(self, doc: Document) -> bool:
        return self.applies_to_source(doc.source)

    def applies_to_source(self, source: str) -> bool:
        return self.sources is None or source in self.sources

    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        raise NotImplementedError


class Filter(Stage):
    """Keeps or drops whole documents; `reject` returns the rule that drops `doc`, or None."""

    def reject(self, doc: Document) -> str | None:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        for doc in docs:
            if not self.applies_to(doc):
                yield doc
                continue
            try:
                rule = self.reject(doc)
            except Exception as e:  # one odd document must not kill the job, nor vanish unseen
                _failed(self, doc, e, stats)
                continue
            if rule is None:
                yield doc
            else:
                stats.remove(doc, rule)


class Mapper(Stage):
    """Rewrites documents one by one; `map` may raise `Drop(rule)` to remove one."""

    def map(self, doc: Document) -> Document:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        for doc in docs:
            if not self.applies_to(doc):
                yield doc
                continue
            try:
                yield self.map(doc)
            except Drop as drop:
                stats.remove(doc, str(drop))
            except Exception as e:
                _failed(self, doc, e, stats)


class GlobalStage(Stage):
    """A stage that needs all tasks' documents: map (per task) -> reduce (once) -> apply.

    `map_task` passes documents through unchanged while recording per-task state under
    `state_dir` (it runs fused at the end of the previous group of stages, so documents are
    read once). `reduce` combines every task's state into global state in `state_dir` and
    returns a JSON-able report. `load` readies a task to apply, then `__call__` filters.
    Stages without a map phase (e.g. decontamination, whose index comes from eval files)
    set `has_map = False`.
    """

    has_map: bool = True

    def map_task(self, docs: Iterable[Document], rank: int, state_dir: pathlib.Path) -> Iterator[Document]:
        yield from docs

    def reduce(self, state_dir: pathlib.Path, world_size: int) -> dict[str, Any]:
        return {}

    def load(self, state_dir: pathlib.Path, rank: int) -> None:
        pass


def in_batches(docs: Iterable[Document], size: int = 256) -> Iterator[list[Document]]:
    """`docs` in lists of `size` (the last one shorter), for stages that score many texts at once."""
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def counted(stage: Stage, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
    """Run `stage` over `docs`, counting documents and bytes in and out into `stats`."""

    def inputs() -> Iterator[Document]:
        for doc in docs:
            stats.docs_in += 1
            stats.bytes_in += text_bytes(doc.text)
            yield doc

    for doc in stage(inputs(), stats):
        stats.docs_out += 1
        stats.bytes_out += text_bytes(doc.text)
        yield doc
