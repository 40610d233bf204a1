"""Load-time mixture: a deterministic weighted interleave of several document sequences.

Weights are shares of DOCUMENTS (not tokens): among the first k documents of the mixture, source i
supplies k * w_i / sum(w) of them, off by less than the number of sources (no sampling noise). To
weight by tokens instead, divide each weight by the source's mean document length (the manifest
has documents and tokens per split).

The interleave is a pure function of the position, so a mixture is a random-access
`grain.MapDataset` and the loader's state is just a position. Slot k goes to source 0 when
ceil((k+1) w0/W) > ceil(k w0/W); otherwise it is slot k - ceil(k w0/W) of the same interleave over
the remaining sources. When a finite source runs out, the remaining ones go on with their own
weights (a new "phase"), so every document of every source appears: nothing is dropped.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import sys
from fractions import Fraction
from typing import Sequence

import grain


def integer_weights(weights: Sequence[float]) -> tuple[int, ...]:
    """Exact small integers with the same ratios (up to 1e-6 relative), for integer-only interleaving."""
    if not weights or any(not (w > 0 and math.isfinite(w)) for w in weights):
        raise ValueError(f"mixture weights must be positive finite numbers, got {list(weights)}")
    fractions = [Fraction(w / max(weights)).limit_denominator(10**6) for w in weights]
    scale = math.lcm(*(f.denominator for f in fractions))
    ints = [int(f * scale) for f in fractions]
    g = math.gcd(*ints)
    return tuple(i // g for i in ints)


def prefix_counts(k: int, weights: Sequence[int]) -> list[int]:
    """How many of the first k slots of the interleave each source fills."""
    counts, rest = [], sum(weights)
    for w in weights[:-1]:
        c = -(-k * w // rest)  # ceil(k * w / rest)
        counts.append(c)
        k, rest = k - c, rest - w
    counts.append(k)
    return counts


def slot_source(k: int, weights: Sequence[int]) -> tuple[int, int]:
    """(source, index within that source) of slot k of the interleave."""
    rest = sum(weights)
    for i, w in enumerate(weights[:-1]):
        before, after = -(-k * w // rest), -(-(k + 1) * w // rest)
        if after > before:
            return i, before
        k, rest = k - before, rest - w
    return len(weights) - 1, k


@dataclasses.dataclass(frozen=True)
class _Phase:
    start: int  # first mixture position of the phase
    sources: tuple[int, ...]  # sources still active
    weights: tuple[int, ...]
    offsets: tuple[int, ...]  # documents of each active source used before the phase


def _plan_phases(lengths: Sequence[int], weights: Sequence[int]) -> tuple[list[_Phase], int]:
    """Phases of the interleave; a phase ends when one of its sources runs out."""
    phases, start = [], 0
    used = [0] * len(lengths)
    active = [i for i, n in enumerate(lengths) if n > 0]
    while active:
        w = tuple(weights[i] for i in active)
        left = [lengths[i] - used[i] for i in active]
        lo, hi = 1, sum(left)  # at hi every slot is filled, so some source has run out
        while lo < hi:  # smallest k at which some source has supplied all its documents
            mid = (lo + hi) // 2
            if any(c >= n for c, n in zip(prefix_counts(mid, w), left)):
                hi = mid
            else:
                lo = mid + 1
        phases.append(_Phase(start, tuple(active), w, tuple(used[i] for i in active)))
        for i, c in zip(active, prefix_counts(lo, w)):
            used[i] += c
        start += lo
        active = [i for i in active if used[i] < lengths[i]]
    return phases, start


class MixedDocuments(grain.MapDataset):
    """Documents of several MapDatasets, interleaved by weight; every document appears once."""

    def __init__(self, parents: Sequence[grain.MapDataset], weights: Sequence[float]):
        super().__init__(list(parents))
        self._weights = integer_weights(weights)
        if len(self._weights) != len(parents):
            raise ValueError(f"{len(parents)} sources but {len(self._weights)} weights")
        self._phases, total = _plan_phases([len(p) for p in parents], self._weights)
        self._starts = [p.start for p in self._phases]
        self._length = min(total, sys.maxsize)  # infinite sources: "length" sys.maxsize like grain

    def __len__(self) -> int:
        return self._length

    def source_and_index(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self._length:
            raise IndexError(f"mixture position {index} is outside [0, {self._length})")
        phase = self._phases[bisect.bisect_right(self._starts, index) - 1]
        slot, j = slot_source(index - phase.start, phase.weights)
        return phase.sources[slot], phase.offsets[slot] + j

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        source, j = self.source_and_index(index)
        return self._parents[source][j]

    def __str__(self) -> str:
        return f"MixedDocuments(weights={self._weights})"
