"""What a stage (reading and encoding included) passed on, removed and repaired: `StageStats`.

One class for every step of data_prep, so the manifest and report.md show them alike: documents
and UTF-8 bytes in and out, removals per reason ("<stage>:<rule>") with a few example places
("file:line" or document id), repairs and stage-specific counters. Stats of one stage in many
tasks merge into one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from data_prep.document import Document

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
