"""Text hashing shared by data_prep (dedup, decontamination) and jaxlm.eval (contamination).

- Words: `normalize_for_dedup(text)` — lower-cased, runs of punctuation and whitespace as one space.
- Shingles: word n-grams; a document with fewer than n words is one shingle (or none). Words and
  then shingles get 64-bit polynomial hashes read off prefix sums over the whole batch (no Python
  loop per word or shingle), each mixed with a 64-bit finaliser.

numpy only: data_prep imports this module (and the record format) and nothing else from jaxlm.
"""

from __future__ import annotations

import re

import numpy as np

_NON_WORD = re.compile(r"[\W_]+")


def normalize_for_dedup(text: str) -> str:
    """Lower-case, punctuation and whitespace runs -> one space: "Hello,  World!" -> "hello world"."""
    return _NON_WORD.sub(" ", text.lower()).strip()


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
