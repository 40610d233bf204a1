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
from data_prep.stats import StageStats, text_bytes  # noqa: F401  (re-exported: stages import them from here)

log = logging.getLogger(__name__)


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
                log.warning("%s failed on %s: %r", self.name, doc.id, e)
                rule = f"error:{type(e).__name__}"
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
                log.warning("%s failed on %s: %r", self.name, doc.id, e)
                stats.remove(doc, f"error:{type(e).__name__}")


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
