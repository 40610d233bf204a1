"""C4's rules (Raffel et al. 2020, sec. 2.2, and the TFDS c4_utils code it links).

Line level: keep only lines that end in terminal punctuation (not an ellipsis) and have at
least `min_words_per_line` words; drop lines mentioning javascript or cookie/terms-of-use
boilerplate, and lines with a word longer than `max_word_length`; strip Wikipedia citation
markers. Document level: drop pages with "lorem ipsum" or a curly bracket, and pages left
with fewer than `min_sentences` sentences. C4's bad-words rule is the `blocklist` stage.
"""

from __future__ import annotations

import dataclasses
import re

from data_prep.document import Document
from data_prep.stages.base import Drop, Mapper, StageStats
from data_prep.stages.registry import register
from data_prep.stages.text import ELLIPSES, TERMINAL_PUNCT

CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                  "use of cookies", "use cookies")
# A sentence ends at terminal punctuation (maybe followed by closing quotes/brackets) and space or end.
SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)")


def count_sentences(line: str) -> int:
    return max(1, len(SENTENCE_END.findall(line)))


@register("c4")
@dataclasses.dataclass
class C4Lines(Mapper):
    min_words_per_line: int = 3
    max_word_length: int = 1000
    min_sentences: int = 5
    remove_citations: bool = True
    require_terminal_punct: bool = True
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    drop_lorem_ipsum: bool = True
    drop_curly_bracket: bool = True

    def __call__(self, docs, stats: StageStats):
        self._stats = stats  # line removals are counted as counters ("lines:<rule>")
        return super().__call__(docs, stats)

    def _line_rule(self, line: str) -> str | None:
        words = line.split()
        if any(len(w) > self.max_word_length for w in words):
            return "long_word"
        if self.require_terminal_punct and (not line.endswith(TERMINAL_PUNCT) or line.endswith(ELLIPSES)):
            return "no_terminal_punct"
        if len(words) < self.min_words_per_line:
            return "too_few_words"
        lower = line.lower()
        if self.drop_javascript_lines and "javascript" in lower:
            return "javascript"
        if self.drop_policy_lines and any(p in lower for p in POLICY_PHRASES):
            return "policy"
        return None

    def map(self, doc: Document) -> Document:
        lower = doc.text.lower()
        if self.drop_lorem_ipsum and "lorem ipsum" in lower:
            raise Drop("lorem_ipsum")
        if self.drop_curly_bracket and "{" in doc.text:
            raise Drop("curly_bracket")
        kept, sentences = [], 0
        for line in doc.text.splitlines():
            line = line.strip()
            if self.remove_citations:
                line = CITATION.sub("", line).strip()
            if not line:
                continue
            rule = self._line_rule(line)
            if rule:
                self._stats.count(f"lines:{rule}")
                continue
            kept.append(line)
            sentences += count_sentences(line)
        if sentences < self.min_sentences:
            raise Drop("too_few_sentences")
        return dataclasses.replace(doc, text="\n".join(kept))
