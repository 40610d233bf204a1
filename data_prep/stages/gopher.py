"""Gopher's quality and repetition rules (Rae et al. 2021, "Scaling Language Models", App. A).

Words are whitespace-separated tokens; tokens made only of punctuation are not words.
Each rule's default is the paper's threshold; the removal reason names the rule.
"""

from __future__ import annotations

import dataclasses
import re
import string

import numpy as np

from data_prep.document import Document
from data_prep.stages.base import Filter
from data_prep.stages.registry import check, register
from data_prep.stages.text import ELLIPSES, is_punctuation

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ("\u2022", "\u25cf", "\u25e6", "\u25aa", "\u2023", "\u2043", "-", "*")
_WORD = re.compile(r"\S+")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_EDGE_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019\u2026"  # "the," and "with." are stop words


def _too_many_words(text: str, max_words: int) -> bool:
    """Counts words lazily so a 100 MB one-line document costs no list of millions of strings."""
    if len(text) <= 20 * max_words:
        return False  # decided later from the split words
    count = 0
    for _ in _WORD.finditer(text):
        count += 1
        if count > max_words:
            return True
    return False


@register("gopher_quality")
@dataclasses.dataclass
class GopherQuality(Filter):
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_hash_ratio: float = 0.1  # "#" per word
    max_ellipsis_ratio: float = 0.1  # "..." or "\u2026" per word
    max_bullet_lines: float = 0.9  # fraction of lines starting with a bullet point
    max_ellipsis_lines: float = 0.3  # fraction of lines ending with an ellipsis
    min_alpha_words: float = 0.8  # fraction of words holding at least one letter
    min_stop_words: int = 2  # occurrences of `stop_words`
    stop_words: list[str] = dataclasses.field(default_factory=lambda: list(STOP_WORDS))

    def __post_init__(self):
        check(0 <= self.min_words <= self.max_words, "gopher_quality: need 0 <= min_words <= max_words")
        self._stop = frozenset(w.lower() for w in self.stop_words)

    def reject(self, doc: Document) -> str | None:
        text = doc.text
        if _too_many_words(text, self.max_words):
            return "word_count"
        words = [w for w in text.split() if not is_punctuation(w)]
        n = len(words)
        if not self.min_words <= n <= self.max_words:
            return "word_count"
        mean_length = sum(map(len, words)) / n if n else 0.0
        if not self.min_mean_word_length <= mean_length <= self.max_mean_word_length:
            return "mean_word_length"
        if text.count("#") > self.max_hash_ratio * n:
            return "hash_ratio"
        if text.count("...") + text.count("\u2026") > self.max_ellipsis_ratio * n:
            return "ellipsis_ratio"
        lines = text.splitlines() or [""]
        if sum(line.lstrip().startswith(BULLETS) for line in lines) > self.max_bullet_lines * len(lines):
            return "bullet_lines"
        if sum(line.rstrip().endswith(ELLIPSES) for line in lines) > self.max_ellipsis_lines * len(lines):
            return "ellipsis_lines"
        if sum(1 for w in words if _HAS_LETTER.search(w)) < self.min_alpha_words * n:
            return "alpha_words"
        if sum(w.strip(_EDGE_PUNCT).lower() in self._stop for w in words) < self.min_stop_words:
            return "stop_words"
        return None


def _duplicate_fraction(parts: list[str], total_chars: int) -> tuple[float, float]:
    """(fraction of parts that repeat an earlier part, fraction of characters in those repeats)."""
    seen: set[str] = set()
    dup_parts = dup_chars = 0
    for part in parts:
        if part in seen:
            dup_parts += 1
            dup_chars += len(part)
        else:
            seen.add(part)
    return dup_parts / max(len(parts), 1), dup_chars / max(total_chars, 1)


def _ngram_keys(word_ids: np.ndarray, n: int) -> np.ndarray:
    """(len - n + 1,) uint64 keys, one per word n-gram (polynomial in the word ids, wrapping)."""
    keys = np.zeros(len(word_ids) - n + 1, dtype=np.uint64)
    for k in range(n):
        keys = keys * np.uint64(1_000_003) + word_ids[k: len(word_ids) - n + 1 + k]
    return keys


@register("gopher_repetition")
@dataclasses.dataclass
class GopherRepetition(Filter):
    """Repeated lines, paragraphs and word n-grams (Gopher Table A1).

    Character fractions use the document's characters (lines/paragraphs) or its word
    characters (n-grams). "top n-gram": characters in all occurrences of the most frequent
    n-gram. "duplicate n-grams": characters of words covered by an n-gram occurrence that
    repeats an earlier one (overlaps counted once).
    """

    max_dup_lines: float = 0.3
    max_dup_paragraphs: float = 0.3
    max_dup_line_chars: float = 0.2
    max_dup_paragraph_chars: float = 0.2
    max_top_ngram_chars: dict[int, float] = dataclasses.field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_dup_ngram_chars: dict[int, float] = dataclasses.field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})

    def __post_init__(self):
        # JSON configs carry the n of each n-gram rule as a string key
        self.max_top_ngram_chars = {int(n): float(f) for n, f in self.max_top_ngram_chars.items()}
        self.max_dup_ngram_chars = {int(n): float(f) for n, f in self.max_dup_ngram_chars.items()}
        check(all(n >= 1 for n in [*self.max_top_ngram_chars, *self.max_dup_ngram_chars]),
              "gopher_repetition: n-gram sizes must be >= 1")

    def reject(self, doc: Document) -> str | None:
        text = doc.text
        paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p]
        frac, chars = _duplicate_fraction(paragraphs, len(text))
        if frac > self.max_dup_paragraphs:
            return "dup_paragraphs"
        if chars > self.max_dup_paragraph_chars:
            return "dup_paragraph_chars"
        lines = [line for line in text.splitlines() if line.strip()]
        frac, chars = _duplicate_fraction(lines, len(text))
        if frac > self.max_dup_lines:
            return "dup_lines"
        if chars > self.max_dup_line_chars:
            return "dup_line_chars"

        words = text.split()
        if not words:
            return None
        vocab: dict[str, int] = {}
        word_ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), np.uint64, len(words))
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        total = int(lengths.sum())
        for n, limit in sorted(self.max_top_ngram_chars.items()):
            if len(words) < n:
                continue
            keys, first, counts = np.unique(_ngram_keys(word_ids, n), return_index=True, return_counts=True)
            top = counts.max()
            if top < 2:
                continue
            start = first[counts == top].min()  # ties: the n-gram seen first
            if lengths[start: start + n].sum() * top > limit * total:
                return f"top_{n}gram_chars"
        for n, limit in sorted(self.max_dup_ngram_chars.items()):
            if len(words) < n:
                continue
            keys = _ngram_keys(word_ids, n)
            _, first = np.unique(keys, return_index=True)
            repeat = np.ones(len(keys), dtype=bool)
            repeat[first] = False
            starts = np.flatnonzero(repeat)
            if not len(starts):
                continue
            cover = np.zeros(len(words) + 1, dtype=np.int64)  # +1 at n-gram start, -1 after its end
            np.add.at(cover, starts, 1)
            np.add.at(cover, starts + n, -1)
            covered = np.cumsum(cover[:-1]) > 0
            if lengths[covered].sum() > limit * total:
                return f"dup_{n}gram_chars"
        return None
