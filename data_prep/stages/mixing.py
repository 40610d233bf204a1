"""Mixing: per-source weights become target shares of the output.

map: units (bytes, words or characters) per source. reduce: each source's rate
r_s = weight_s * total / units_s, with total = all input units unless `total` is set (the
tokenizer is trained after this stage, so shares are measured in `unit`; UTF-8 bytes track
tokens closely within one kind of text). apply: a document of source s is written
floor(r_s) times plus once more with probability frac(r_s), the draw seeded by (seed, id),
so the output does not depend on how documents were split into tasks. Repeats get ids
"<id>#rep<k>". Counters "units_out:<source>" give the shares reached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
from typing import Any

from data_prep.document import Document
from data_prep.stages.base import GlobalStage, StageStats, text_bytes
from data_prep.stages.files import atomic_write_json, read_json
from data_prep.stages.registry import StageConfigError, check, register

UNITS = ("bytes", "words", "chars")


def measure(text: str, unit: str) -> int:
    if unit == "bytes":
        return text_bytes(text)
    if unit == "words":
        return len(text.split())
    return len(text)


def uniform(seed: int, key: str) -> float:
    """A deterministic draw in [0, 1) from (seed, key)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little") / 2**64


def shares(units: dict[str, int]) -> dict[str, float]:
    total = sum(units.values())
    return {s: (u / total if total else 0.0) for s, u in sorted(units.items())}


@register("mix")
@dataclasses.dataclass
class Mix(GlobalStage):
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # source -> target share
    unit: str = "bytes"
    total: int | None = None  # output size in `unit`; default: the input's size
    max_repeat: float = 16.0  # a source is never repeated more often than this
    seed: int = 0

    def __post_init__(self):
        check(bool(self.weights), "mix: set 'weights' to {source name: target share}")
        check(all(w >= 0 for w in self.weights.values()) and sum(self.weights.values()) > 0,
              "mix: weights must be >= 0 and not all 0")
        check(self.unit in UNITS, f"mix: unit must be one of {UNITS}, got {self.unit!r}")
        check(self.total is None or self.total > 0, "mix: total must be > 0")
        check(self.max_repeat >= 1, "mix: max_repeat must be >= 1")
        norm = sum(self.weights.values())
        self._targets = {s: w / norm for s, w in self.weights.items()}

    def map_task(self, docs, rank, state_dir):
        units: dict[str, int] = {}
        for doc in docs:
            units[doc.source] = units.get(doc.source, 0) + measure(doc.text, self.unit)
            yield doc
        atomic_write_json(pathlib.Path(state_dir) / f"map-{rank:05d}.json", units)

    def reduce(self, state_dir, world_size) -> dict[str, Any]:
        units: dict[str, int] = {}
        for r in range(world_size):
            for source, n in read_json(pathlib.Path(state_dir) / f"map-{r:05d}.json").items():
                units[source] = units.get(source, 0) + n
        unweighted = sorted(set(units) - set(self._targets))
        if unweighted:
            raise StageConfigError(
                f"mix: sources {unweighted} have no weight; add them to mix.weights (0 drops a source)")
        total = self.total or sum(units.values())
        rates = {}
        for source, target in sorted(self._targets.items()):
            have = units.get(source, 0)
            rates[source] = min(target * total / have, self.max_repeat) if have else 0.0
        expected = {s: units.get(s, 0) * r for s, r in rates.items()}
        report = {"unit": self.unit, "units_in": dict(sorted(units.items())), "target_shares": self._targets,
                  "rates": rates, "expected_shares": shares({s: round(e) for s, e in expected.items()}),
                  "missing_sources": sorted(s for s in self._targets if not units.get(s))}
        atomic_write_json(pathlib.Path(state_dir) / "rates.json", rates)
        return report

    def load(self, state_dir, rank):
        self._rates = read_json(pathlib.Path(state_dir) / "rates.json")

    def __call__(self, docs, stats: StageStats):
        for doc in docs:
            rate = self._rates.get(doc.source, 0.0)
            copies = math.floor(rate) + (uniform(self.seed, doc.id) < rate - math.floor(rate))
            if copies == 0:
                stats.remove(doc, "downsampled")
                continue
            size = measure(doc.text, self.unit)
            stats.count(f"units_out:{doc.source}", size * copies)
            if copies > 1:
                stats.count(f"repeated_docs:{doc.source}", copies - 1)
            yield doc
            for k in range(1, copies):
                yield Document(text=doc.text, id=f"{doc.id}#rep{k}", source=doc.source,
                               meta={**doc.meta, "repeat": k})
