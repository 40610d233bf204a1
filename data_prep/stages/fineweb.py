"""FineWeb's own rules on top of Gopher and C4 (Penedo et al. 2024, FineWeb, sec. 3.3).

- lines ending in terminal punctuation: fraction <= 0.12 -> removed
- short lines (<= 30 characters): fraction >= 0.67 -> removed
- characters in duplicated lines: fraction >= 0.01 of the non-newline characters -> removed
- newlines per word > 0.3 (list-like pages) -> removed
"""

from __future__ import annotations

import dataclasses

from data_prep.document import Document
from data_prep.stages.base import Filter
from data_prep.stages.registry import register
from data_prep.stages.text import TERMINAL_PUNCT, is_punctuation


@register("fineweb_quality")
@dataclasses.dataclass
class FineWebQuality(Filter):
    min_punct_lines: float = 0.12  # removed when the fraction is <= this
    max_short_lines: float = 0.67  # removed when the fraction is >= this
    short_line_length: int = 30
    max_dup_line_chars: float = 0.01  # removed when the fraction is >= this
    max_newlines_per_word: float = 0.3  # removed when the ratio is > this

    def reject(self, doc: Document) -> str | None:
        text = doc.text
        lines = text.split("\n")
        if sum(line.rstrip().endswith(TERMINAL_PUNCT) for line in lines) <= self.min_punct_lines * len(lines):
            return "punct_lines"
        if sum(len(line) <= self.short_line_length for line in lines) >= self.max_short_lines * len(lines):
            return "short_lines"
        seen: set[str] = set()
        dup_chars = 0
        for line in lines:
            if not line.strip():
                continue
            if line in seen:
                dup_chars += len(line)
            else:
                seen.add(line)
        if dup_chars >= self.max_dup_line_chars * max(len(text) - text.count("\n"), 1):
            return "dup_line_chars"
        words = sum(1 for w in text.split() if not is_punctuation(w))
        if text.count("\n") > self.max_newlines_per_word * max(words, 1):
            return "newlines_per_word"
        return None
