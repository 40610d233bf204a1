"""Small text helpers shared by the filters and dedup (no state, no I/O)."""

from __future__ import annotations

import re

from jaxlm.data.texthash import normalize_for_dedup  # noqa: F401  (the words dedup hashes; shared with eval)

# Lines "end in terminal punctuation" as C4 and FineWeb define it (closing quotes count).
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "\u201d", "\u2019")
ELLIPSES = ("...", "\u2026")

_PUNCT_ONLY = re.compile(r"^[\W_]+$")


def is_punctuation(token: str) -> bool:
    return bool(_PUNCT_ONLY.match(token))
