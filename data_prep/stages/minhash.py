"""MinHash LSH, vectorised with numpy: shingle hashes, signatures, band keys, clusters.

- Shingles: word n-grams (default 5) of `normalize_for_dedup(text)`; a document with fewer
  than n words is one shingle. Words and then shingles get 64-bit polynomial hashes read off
  prefix sums over the whole batch (no Python loop per word or shingle), each mixed with a
  64-bit finaliser.
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

from data_prep.stages.text import normalize_for_dedup

U64 = np.uint64


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: every input bit affects every output bit."""
    x = x ^ (x >> U64(33))
    x = x * U64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> U64(33))
    x = x * U64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> U64(33))


class _Powers:
    """base^j and base^-j mod 2^64 for j < n, grown on demand (shared by all batches)."""

    def __init__(self, base: int):
        self.base, self.base_inv = base, pow(base, -1, 2**64)  # base is odd, so invertible
        self.fwd = np.ones(1, U64)
        self.inv = np.ones(1, U64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.fwd) < n:
            size = max(n, 2 * len(self.fwd))
            with np.errstate(over="ignore"):  # [1, base, base^2, ...] and [1, base^-1, ...]
                self.fwd = np.cumprod(np.full(size, self.base, U64)) * U64(self.base_inv)
                self.inv = np.cumprod(np.full(size, self.base_inv, U64)) * U64(self.base)
        return self.fwd[:n], self.inv[:n]


_BYTE_POWERS = _Powers(0x100000001B3)
_WORD_POWERS = _Powers(0x9E3779B97F4A7C15 | 1)

# Bytes that separate words in lower-cased ASCII text: everything but [0-9a-z]. Non-ASCII
# documents go through the regex normaliser first, so their remaining bytes are word bytes.
_IS_SEP = np.ones(256, dtype=bool)
_IS_SEP[np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", np.uint8)] = False
_IS_SEP[0x80:] = False


def _span_hashes(prefix: np.ndarray, inv: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Position-free polynomial hash of items [start, end) from prefix sums of item * base^j."""
    with np.errstate(over="ignore"):
        return (prefix[end] - prefix[start]) * inv[start]


def _prefix(values: np.ndarray, fwd: np.ndarray) -> np.ndarray:
    prefix = np.zeros(len(values) + 1, U64)
    with np.errstate(over="ignore"):
        np.cumsum(values.astype(U64) * fwd[: len(values)], out=prefix[1:])
    return prefix


def shingle_hashes(texts: list[str], n: int = 5, short_docs: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(hashes (S,) uint64, offsets (D+1,)): document d's shingles are hashes[offsets[d]:offsets[d+1]].

    Words are those of `normalize_for_dedup`; a shingle's hash depends only on its n words.
    A document with fewer than n words is one shingle if `short_docs`, else none; one whose
    normalised text is empty has none.
    """
    # ASCII documents need only lower(): separator bytes are found in numpy, ~30x faster than the regex.
    parts = [(t.lower() if t.isascii() else normalize_for_dedup(t)).encode("utf-8", "surrogatepass") for t in texts]
    doc_start = np.cumsum([0] + [len(p) + 1 for p in parts])[:-1]  # (D,) byte offset of each document
    b = np.frombuffer(b" ".join(parts) + b" ", np.uint8)
    is_sep = _IS_SEP[b]
    edges = np.diff(np.concatenate(([True], is_sep)).astype(np.int8))
    starts, ends = np.flatnonzero(edges == -1), np.flatnonzero(edges == 1)  # (W,) word byte spans
    fwd, inv = _BYTE_POWERS.get(len(b) + 1)
    words = fmix64(_span_hashes(_prefix(b, fwd), inv, starts, ends))  # (W,)

    word_doc = np.searchsorted(doc_start, starts, side="right") - 1  # (W,)
    words_per_doc = np.bincount(word_doc, minlength=len(texts))
    first_word = np.concatenate(([0], np.cumsum(words_per_doc)))  # (D+1,)
    # shingles per document: words - n + 1, or 1 for a short document (if `short_docs`), or 0
    shingles_per_doc = np.maximum(words_per_doc - n + 1, (words_per_doc > 0) if short_docs else 0)
    offsets = np.concatenate(([0], np.cumsum(shingles_per_doc)))
    shingle_doc = np.repeat(np.arange(len(texts)), shingles_per_doc)
    first = np.arange(offsets[-1]) - offsets[shingle_doc] + first_word[shingle_doc]  # first word
    end = np.minimum(first + n, first_word[shingle_doc + 1])  # one past the last word
    wfwd, winv = _WORD_POWERS.get(len(words) + 1)
    return fmix64(_span_hashes(_prefix(words, wfwd), winv, first, end)), offsets


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

