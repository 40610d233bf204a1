"""The stage interface: a stage turns a stream of Documents into a stream of Documents.

Every removal is counted in `StageStats` under a reason string ("<stage>:<rule>") with a few
example document ids, so the report can say why each document left and where it came from.
Stages that must see every task's documents before deciding (dedup, mixing, the quality
classifier, decontamination's index) are `GlobalStage`s: map (per task) -> reduce (once) ->
apply (per task).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Iterable, Iterator

from data_prep.document import Document

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5  # example doc ids kept per removal reason


def text_bytes(text: str) -> int:
    """UTF-8 size of `text`; lone surrogates (from broken decoding) count, never raise."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


@dataclasses.dataclass
class StageStats:
    """Counts for one stage in one task (or merged over tasks); JSON round-trips exactly."""

    stage: str
    docs_in: int = 0
    bytes_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    removed: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> documents
    removed_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> bytes
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # reason -> doc ids
    counters: dict[str, int] = dataclasses.field(default_factory=dict)  # stage-specific, additive
    # Every removal as (doc id, reason) when a task keeps a full log; not part of the JSON.
    log: list[tuple[str, str]] | None = dataclasses.field(default=None, repr=False, compare=False)

    def remove(self, doc: Document, rule: str) -> None:
        """Record that `doc` was dropped by `rule`; the reason is "<stage>:<rule>"."""
        reason = f"{self.stage}:{rule}"
        if self.log is not None:
            self.log.append((doc.id, reason))
        self.removed[reason] = self.removed.get(reason, 0) + 1
        self.removed_bytes[reason] = self.removed_bytes.get(reason, 0) + text_bytes(doc.text)
        ids = self.examples.setdefault(reason, [])
        if len(ids) < MAX_EXAMPLES:
            ids.append(doc.id)

    def skip(self, rule: str, where: str, count: int = 1) -> None:
        """Record `count` inputs dropped at `where` ("file" or "file:line") that never became
        Documents: malformed lines, unreadable files (what readers report)."""
        reason = f"{self.stage}:{rule}"
        self.removed[reason] = self.removed.get(reason, 0) + count
        ids = self.examples.setdefault(reason, [])
        if len(ids) < MAX_EXAMPLES:
            ids.append(where)
        if self.log is not None:
            self.log.append((where, reason))

    def repair(self, rule: str, where: str, count: int = 1) -> None:
        """Record `count` repairs inside the input at `where` (e.g. invalid UTF-8 replaced)."""
        self.count(f"repaired:{rule}", count)
        ids = self.examples.setdefault(f"{self.stage}:repaired:{rule}", [])
        if len(ids) < MAX_EXAMPLES:
            ids.append(where)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def merge(self, other: "StageStats") -> "StageStats":
        """Add `other` into self (tasks merged in rank order keep examples deterministic)."""
        if other.stage != self.stage:
            raise ValueError(f"cannot merge stats of stage {other.stage!r} into {self.stage!r}")
        self.docs_in += other.docs_in
        self.bytes_in += other.bytes_in
        self.docs_out += other.docs_out
        self.bytes_out += other.bytes_out
        for mine, theirs in ((self.removed, other.removed), (self.removed_bytes, other.removed_bytes),
                             (self.counters, other.counters)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        for reason, ids in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(ids[: MAX_EXAMPLES - len(kept)])
        return self

    @property
    def docs_removed(self) -> int:
        return sum(self.removed.values())

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "log"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StageStats":
        return cls(**data)


class Drop(Exception):
    """Raised by `Mapper.map` to remove a document; the message is the rule name."""


class Stage:
    """One concern. Subclasses are dataclasses whose fields are the config keys."""

    name: str = "stage"  # set per instance by the registry (the spec's `name`, else its `type`)
    sources: frozenset[str] | None = None  # per-document stages: only these sources (spec `sources`)

    def applies_to(self, doc: Document) -> bool:
        return self.sources is None or doc.source in self.sources

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
