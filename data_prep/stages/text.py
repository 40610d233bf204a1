"""Small text helpers shared by the filters and dedup (no state, no I/O)."""

from __future__ import annotations

import re

# Lines "end in terminal punctuation" as C4 and FineWeb define it (closing quotes count).
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "\u201d", "\u2019")
ELLIPSES = ("...", "\u2026")

_NON_WORD = re.compile(r"[\W_]+")
_PUNCT_ONLY = re.compile(r"^[\W_]+$")


def normalize_for_dedup(text: str) -> str:
    """Lower-case, punctuation and whitespace runs -> one space: "Hello,  World!" -> "hello world"."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def is_punctuation(token: str) -> bool:
    return bool(_PUNCT_ONLY.match(token))
