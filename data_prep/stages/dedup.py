"""Exact and MinHash-LSH near-duplicate removal, as map -> reduce -> apply.

map (per task): a key per document (exact: hash of the normalised text; near: LSH band keys
from MinHash signatures) into `state_dir/map-<rank>.npz`, with the document ids.
reduce (once): clusters of documents sharing any key (union-find); the survivor of each
cluster is its smallest document id, so the result does not depend on task order or count.
apply (per task): drop the documents the reduce marked, by position in the task's stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any, Iterable, Iterator

import numpy as np

from data_prep.document import Document
from data_prep.stages import minhash
from data_prep.stages.base import GlobalStage, StageStats
from data_prep.stages.files import atomic_save_npz, load_npz
from data_prep.stages.registry import check, register
from data_prep.stages.text import normalize_for_dedup


def _batches(docs: Iterable[Document], max_docs: int = 512, max_chars: int = 4_000_000) -> Iterator[list[Document]]:
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def cluster_size_histogram(labels: np.ndarray) -> dict[int, int]:
    """{cluster size: number of clusters} for clusters of two or more documents."""
    sizes = np.bincount(np.bincount(labels))
    return {int(size): int(count) for size, count in enumerate(sizes) if size >= 2 and count}


class _KeyDedup(GlobalStage):
    """Shared map/reduce/apply; subclasses define the per-document keys."""

    rule = "duplicate"

    def keys(self, docs: list[Document]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """((n, columns) uint64 keys, (n,) bool active, extra arrays to store)."""
        raise NotImplementedError

    def candidate_pairs(self, keys: np.ndarray, active: np.ndarray, extra: dict[str, np.ndarray]):
        return minhash.candidate_edges(keys, active)

    def map_task(self, docs, rank, state_dir):
        parts: list[tuple] = []
        ids: list[str] = []
        for batch in _batches(docs):
            parts.append(self.keys(batch))
            ids.extend(d.id for d in batch)
            yield from batch
        parts = parts or [self.keys([])]  # an empty task still stores arrays of the right shapes
        atomic_save_npz(pathlib.Path(state_dir) / f"map-{rank:05d}.npz",
                        keys=np.concatenate([p[0] for p in parts]), active=np.concatenate([p[1] for p in parts]),
                        ids=np.array(ids, dtype=str), **{k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]})

    def reduce(self, state_dir, world_size) -> dict[str, Any]:
        state_dir = pathlib.Path(state_dir)
        parts = [load_npz(state_dir / f"map-{r:05d}.npz") for r in range(world_size)]
        counts = [len(p["active"]) for p in parts]
        ids = np.concatenate([p["ids"] for p in parts])
        keys = np.concatenate([p["keys"] for p in parts])
        active = np.concatenate([p["active"] for p in parts])
        extra = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k not in ("keys", "active", "ids")}
        # Relabel so index order is id order: every cluster's label (its smallest index) is then
        # its smallest id, the survivor, whatever the task layout. Equal ids: earlier task first.
        order = np.lexsort((np.arange(len(ids)), ids))
        u, v = self.candidate_pairs(keys[order], active[order], {k: a[order] for k, a in extra.items()})
        labels_sorted = minhash.union_find(len(ids), u, v)
        labels = np.empty_like(labels_sorted)
        labels[order] = order[labels_sorted]  # back to stream order; label = survivor's stream index
        drop = labels != np.arange(len(ids))
        bounds = np.cumsum([0] + counts)
        for r in range(world_size):
            np.save(state_dir / f"drop-{r:05d}.npy", np.flatnonzero(drop[bounds[r]: bounds[r + 1]]))
        return {"documents": int(len(ids)), "removed": int(drop.sum()),
                "clusters": int(sum(cluster_size_histogram(labels).values())),
                "cluster_sizes": cluster_size_histogram(labels)}

    def load(self, state_dir, rank):
        self._drop = set(np.load(pathlib.Path(state_dir) / f"drop-{rank:05d}.npy").tolist())

    def __call__(self, docs, stats: StageStats):
        for position, doc in enumerate(docs):
            if position in self._drop:
                stats.remove(doc, self.rule)
            else:
                yield doc


@register("exact_dedup")
@dataclasses.dataclass
class ExactDedup(_KeyDedup):
    """Removes documents whose normalised text (lower-cased, punctuation and whitespace runs
    collapsed) equals an earlier id's."""

    columns = 1
    rule = "exact_duplicate"

    def keys(self, docs):
        digests = b"".join(hashlib.blake2b(normalize_for_dedup(d.text).encode("utf-8", "surrogatepass"),
                                           digest_size=8).digest() for d in docs)
        keys = np.frombuffer(digests, dtype="<u8").reshape(-1, 1).astype(np.uint64)
        return keys, np.ones(len(docs), bool), {}


@register("minhash_dedup")
@dataclasses.dataclass
class MinHashDedup(_KeyDedup):
    """Near-duplicate removal: word `ngram`-shingles, `bands` x `rows` MinHash LSH.

    Defaults (5-grams, 14 x 8 = 112 hashes) catch pairs above Jaccard ~0.72; see
    `minhash.format_s_curve(bands, rows)`. With `verify_threshold` set, candidate pairs
    must also agree on that fraction of all signature values (an estimate of their Jaccard
    similarity), which trims the S-curve's soft lower tail.
    """

    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    verify_threshold: float | None = None
    rule = "near_duplicate"

    def __post_init__(self):
        check(self.ngram >= 1 and self.bands >= 1 and self.rows >= 1,
              "minhash_dedup: ngram, bands and rows must be >= 1")
        check(self.verify_threshold is None or 0.0 < self.verify_threshold <= 1.0,
              "minhash_dedup: verify_threshold must be in (0, 1] or null")
        self._a, self._b = minhash.permutations(self.bands * self.rows, self.seed)

    @property
    def columns(self) -> int:
        return self.bands

    def keys(self, docs):
        hashes, offsets = minhash.shingle_hashes([d.text for d in docs], self.ngram)
        sig = minhash.signatures(hashes, offsets, self._a, self._b)
        extra = {"sig": sig} if self.verify_threshold is not None else {}
        return minhash.band_keys(sig, self.bands, self.rows), np.diff(offsets) > 0, extra

    def candidate_pairs(self, keys, active, extra):
        u, v = minhash.candidate_edges(keys, active)
        if self.verify_threshold is not None and len(u):
            sig = extra["sig"]
            agree = (sig[u] == sig[v]).mean(axis=1)  # estimated Jaccard of each candidate pair
            keep = agree >= self.verify_threshold
            u, v = u[keep], v[keep]
        return u, v

    def reduce(self, state_dir, world_size):
        report = super().reduce(state_dir, world_size)
        report["s_curve"] = minhash.format_s_curve(self.bands, self.rows)
        return report
