"""A user-supplied word list (e.g. LDNOOBW's): drop documents that use listed words or phrases.

The project ships no list; `path` names a UTF-8 file with one word or phrase per line
(blank lines and lines starting with "#" are ignored). Matching is case-insensitive on
whole words (\\w+ tokens): "ass" does not match "class"; "2 girls 1 cup" matches those four
tokens in a row.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re

from data_prep.document import Document
from data_prep.stages.base import Filter
from data_prep.stages.registry import StageConfigError, check, register

_TOKEN = re.compile(r"\w+")


def load_word_list(path: str) -> list[tuple[str, ...]]:
    """The list's entries as lower-cased token tuples."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise StageConfigError(
            f"blocklist: word list {path!r} not found; set 'path' to a text file with one word or phrase per line")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise StageConfigError(f"blocklist: word list {path!r} is not UTF-8 text") from None
    entries = {tuple(_TOKEN.findall(line.lower())) for line in lines if not line.lstrip().startswith("#")}
    entries.discard(())
    if not entries:
        raise StageConfigError(f"blocklist: word list {path!r} has no words")
    return sorted(entries)


def _occurrences(tokens: list[str], phrase: tuple[str, ...]) -> int:
    n = len(phrase)
    return sum(1 for i, t in enumerate(tokens) if t == phrase[0] and tuple(tokens[i: i + n]) == phrase)


@register("blocklist")
@dataclasses.dataclass
class Blocklist(Filter):
    path: str = ""
    min_matches: int = 1  # matches (repeats count) that remove a document

    def __post_init__(self):
        check(bool(self.path), "blocklist: set 'path' to a word list file (the project ships none)")
        check(self.min_matches >= 1, "blocklist: min_matches must be >= 1")
        entries = load_word_list(self.path)
        self._words = frozenset(e[0] for e in entries if len(e) == 1)
        self._phrases = [e for e in entries if len(e) > 1]

    def reject(self, doc: Document) -> str | None:
        tokens = _TOKEN.findall(doc.text.lower())
        present = set(tokens)  # set algebra runs in C: most documents stop here
        words = present & self._words
        phrases = [p for p in self._phrases if present.issuperset(p)]
        if not words and not phrases:
            return None
        counts = collections.Counter(tokens)
        matches = sum(counts[w] for w in words) + sum(_occurrences(tokens, p) for p in phrases)
        return "blocked_word" if matches >= self.min_matches else None
