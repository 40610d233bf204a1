"""Which comparisons a round holds and which one a rater sees next.

Items: every (prompt, sample) is one item comparing two systems. With two systems that is always
the same pair; with more, the pairs are dealt round-robin over a seeded shuffle of the items, so
each pair gets the same number of items give or take one. A set share of the items (`overlap`) is
shared: every rater rates those, which is what agreement is measured on; every other item is rated
by one rater.

Next item: a rater first gets back the item they were shown and have not rated (a reload shows the
same page); then shared items they have not rated, then unshared items nobody has rated or is
holding (an item shown to someone within `LEASE_S` is held for them); within those, the pair of
systems with the fewest ratings so far comes first, then a per-rater shuffled order. The left/right
order of each item is drawn per rater and kept.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import threading
import time
from typing import Optional

from jaxlm.humaneval.store import Item, OpenItem, Store

LEASE_S = 30 * 60  # an unshared item shown to a rater is held for them this long
_CHOOSING = threading.Lock()  # the server's worker threads choose one at a time: no item handed out twice


def build_items(n_prompts: int, samples: int, n_systems: int, overlap: float, seed: int) -> list[Item]:
    units = [(p, k) for p in range(n_prompts) for k in range(samples)]
    rng = random.Random(seed)
    rng.shuffle(units)
    pairs = list(itertools.combinations(range(n_systems), 2))
    rng.shuffle(pairs)
    n_shared = round(overlap * len(units))
    items = [Item(p, k, *pairs[i % len(pairs)], shared=i < n_shared) for i, (p, k) in enumerate(units)]
    return sorted(items, key=lambda it: (it.prompt, it.sample))


def _draw(seed: int, *key) -> int:
    """A stable pseudo-random number of (seed, key): the same after a restart, different per rater."""
    return int.from_bytes(hashlib.sha256(repr((seed, key)).encode()).digest()[:8], "big")


def _available(c: OpenItem) -> bool:
    return c.shared or (c.ratings == 0 and c.held == 0)


def next_item(store: Store, rater_id: int, seed: int, per_rater: Optional[int] = None) -> Optional[int]:
    """The item to show this rater now (assigning it), or None when they are done."""
    with _CHOOSING:
        return _next_item(store, rater_id, seed, per_rater)


def _next_item(store: Store, rater_id: int, seed: int, per_rater: Optional[int]) -> Optional[int]:
    pending = store.pending(rater_id)
    if pending is not None:
        return pending
    if per_rater is not None and store.rated_count(rater_id) >= per_rater:
        return None
    candidates = [c for c in store.open_items(rater_id, time.time() - LEASE_S) if _available(c)]
    if not candidates:
        return None
    loads = store.pair_loads()
    best = min(candidates, key=lambda c: (not c.shared, loads.get((c.first, c.second), 0),
                                          _draw(seed, "order", rater_id, c.id)))
    left = best.first if _draw(seed, "side", rater_id, best.id) % 2 == 0 else best.second
    store.assign(rater_id, best.id, left)
    return best.id


def remaining(store: Store, rater_id: int, per_rater: Optional[int] = None) -> int:
    """About how many items this rater still has to go (their held item included)."""
    open_ids = {c.id for c in store.open_items(rater_id, time.time() - LEASE_S) if _available(c)}
    pending = store.pending(rater_id)
    free = len(open_ids | ({pending} if pending is not None else set()))
    if per_rater is not None:
        free = min(free, per_rater - store.rated_count(rater_id))
    return max(free, 0)
