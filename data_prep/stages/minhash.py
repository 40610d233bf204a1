"""MinHash LSH, vectorised with numpy: signatures, band keys, clusters over shingle hashes.

- Shingles: word n-grams (default 5), hashed by `jaxlm.data.texthash.shingle_hashes` (shared with
  the evaluation side's contamination check, so both agree on what an n-gram is).
- Signatures: K hash functions h_k(x) = (a_k * x + b_k mod 2^64) >> 32 (multiply-add-shift
  universal hashing, the mod-2^64 form of a*x+b mod p) evaluated for all shingles x and all
  k at once; the minimum per document is its signature (D, K) uint32.
- Bands: K = bands * rows; each band's rows hash to one uint64 key. Two documents are
  candidates when any band key matches: P(candidate | Jaccard s) = 1 - (1 - s^rows)^bands.
- Clusters: documents sharing a band key are joined by a vectorised union-find (hook the
  larger root under the smaller, then pointer-jump), so every cluster's label is its
  smallest member index. Sorting by key replaces any all-pairs step: O(N log N).
"""

from __future__ import annotations

import numpy as np

from jaxlm.data.texthash import U64, fmix64, shingle_hashes

def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(a (K,), b (K,)) uint64 parameters of the K hash functions; a is odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * U64(2) + U64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * U64(2)
    return a, b


def signatures(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray,
               chunk: int = 2048) -> np.ndarray:
    """(D, K) uint32 MinHash signatures; a document without shingles gets all 0xFFFFFFFF."""
    num_docs, num_perm = len(offsets) - 1, len(a)
    counts = np.diff(offsets)
    nonempty = np.flatnonzero(counts > 0)
    sig = np.full((num_perm, len(nonempty)), 0xFFFFFFFF, U64)  # (K, D'): fast reductions on the last axis
    doc_of = np.repeat(np.arange(len(nonempty)), counts[nonempty])  # (S,) compact document index
    work = np.empty((num_perm, chunk), U64)
    for lo in range(0, len(hashes), chunk):
        x = hashes[lo: lo + chunk]
        h = work[:, : len(x)]  # (K, C)
        with np.errstate(over="ignore"):
            np.multiply(a[:, None], x[None, :], out=h)
            np.add(h, b[:, None], out=h)
        np.right_shift(h, U64(32), out=h)
        docs = doc_of[lo: lo + chunk]
        seg = np.flatnonzero(np.concatenate(([True], docs[1:] != docs[:-1])))  # segment starts
        first, last = docs[0], docs[-1]  # the chunk's documents are first..last, in order
        block = sig[:, first: last + 1]
        np.minimum(block, np.minimum.reduceat(h, seg, axis=1), out=block)
    out = np.full((num_docs, num_perm), 0xFFFFFFFF, np.uint32)
    out[nonempty] = sig.T
    return out


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(D, bands) uint64: one key per band of `rows` signature values."""
    if sig.shape[1] < bands * rows:
        raise ValueError(f"signatures have {sig.shape[1]} hashes, need bands*rows = {bands * rows}")
    v = sig[:, : bands * rows].reshape(len(sig), bands, rows).astype(U64)
    key = np.zeros((len(sig), bands), U64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            key = fmix64(key ^ v[:, :, r]) + U64(r + 1)
        key = key ^ (np.arange(bands, dtype=U64) * U64(0x9E3779B97F4A7C15))  # keep bands apart
    return key


def candidate_edges(keys: np.ndarray, active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) index pairs joining each document to the first document sharing a column's key.

    `keys` is (N, columns); rows where `active` is False take part in no edge.
    """
    idx = np.arange(len(keys)) if active is None else np.flatnonzero(active)
    us, vs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for col in range(keys.shape[1] if len(idx) else 0):
        k = keys[idx, col]
        order = np.argsort(k, kind="stable")
        ks = k[order]
        new_run = np.concatenate(([True], ks[1:] != ks[:-1]))
        run_first = np.maximum.accumulate(np.where(new_run, np.arange(len(ks)), 0))
        member = ~new_run
        us.append(idx[order[member]])
        vs.append(idx[order[run_first[member]]])
    return np.concatenate(us), np.concatenate(vs)


def union_find(num: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(num,) labels: each item's label is the smallest index in its connected component."""
    parent = np.arange(num)
    while True:
        pu, pv = parent[u], parent[v]  # roots: `parent` is fully compressed here
        lo, hi = np.minimum(pu, pv), np.maximum(pu, pv)
        differ = lo != hi
        if not differ.any():
            return parent
        np.minimum.at(parent, hi[differ], lo[differ])  # hook larger root under smaller
        while True:  # pointer jumping until every item points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def candidate_probability(s: float | np.ndarray, bands: int, rows: int):
    """P(two documents with Jaccard s share a band) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def s_curve(bands: int, rows: int, points=(0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)) -> list[tuple[float, float]]:
    return [(float(s), float(candidate_probability(s, bands, rows))) for s in points]


def s_curve_threshold(bands: int, rows: int) -> float:
    """The similarity where the S-curve is steepest, about (1/bands)^(1/rows)."""
    return (1.0 / bands) ** (1.0 / rows)


def format_s_curve(bands: int, rows: int) -> str:
    lines = [f"MinHash LSH S-curve: {bands} bands x {rows} rows = {bands * rows} hashes, "
             f"threshold ~ {s_curve_threshold(bands, rows):.3f}",
             "  Jaccard  P(candidate)"]
    lines += [f"  {s:7.2f}  {p:12.4f}" for s, p in s_curve(bands, rows)]
    return "\n".join(lines)


def exact_jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of two texts' shingle sets, computed exactly (for tests/benchmarks)."""
    (ha, hb), _ = zip(*(shingle_hashes([t], n) for t in (a, b)))
    sa, sb = set(ha.tolist()), set(hb.tolist())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0

