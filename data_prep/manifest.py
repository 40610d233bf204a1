"""Stage reports (what each stage kept, skipped and repaired) and the atomic manifest write."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

MAX_EXAMPLES = 10  # per reason: enough to find the bad files, small enough for the manifest


@dataclasses.dataclass
class Tally:
    """How often something happened, with the first few places it happened ("file:line")."""

    count: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def add(self, where: str, count: int = 1) -> None:
        self.count += count
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(where if count == 1 else f"{where} ({count})")


@dataclasses.dataclass
class StageReport:
    """Counts of one stage: documents and UTF-8 bytes it passed on, and why anything was lost or changed.

    Stages call `skip(reason, where)` for every document (or file) they drop and
    `repair(reason, where, count)` for every change they make inside a document, so nothing is
    lost silently. `documents`/`bytes` are filled by the pipeline from what the stage yields.
    """

    name: str
    documents: int = 0
    bytes: int = 0
    skipped: dict[str, Tally] = dataclasses.field(default_factory=dict)
    repaired: dict[str, Tally] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # stage-specific numbers

    def skip(self, reason: str, where: str, count: int = 1) -> None:
        self.skipped.setdefault(reason, Tally()).add(where, count)

    def repair(self, reason: str, where: str, count: int) -> None:
        self.repaired.setdefault(reason, Tally()).add(where, count)

    # the calls document stages (data_prep/stages) make on their stats object, so they run here too
    def remove(self, doc, rule: str) -> None:
        self.skip(rule, doc.id)

    def count(self, key: str, n: int = 1) -> None:
        self.extra[key] = self.extra.get(key, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "documents": self.documents,
            "bytes": self.bytes,
            "skipped": {k: dataclasses.asdict(v) for k, v in sorted(self.skipped.items())},
            "repaired": {k: dataclasses.asdict(v) for k, v in sorted(self.repaired.items())},
            **self.extra,
        }

    def warnings(self) -> list[str]:
        lines = []
        for kind, tallies in (("skipped", self.skipped), ("repaired", self.repaired)):
            for reason, t in sorted(tallies.items()):
                lines.append(f"{self.name}: {kind} {t.count} x {reason} (e.g. {', '.join(t.examples[:3])})")
        return lines


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes to a temporary file beside `path`, syncs it and renames it into place.

    A reader sees either no file or the whole file; for manifest.json that is what marks a
    dataset as finished.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
