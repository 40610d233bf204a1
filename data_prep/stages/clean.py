"""Cleaning: HTML -> main text, unicode repair + NFC + whitespace, emoji/symbols -> text."""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from typing import Any

from data_prep.document import Document
from data_prep.stages.base import Drop, Mapper
from data_prep.stages.registry import check, register

EXTRACTORS = ("trafilatura", "resiliparse")


@register("html_extract")
@dataclasses.dataclass
class HtmlExtract(Mapper):
    """Main text of an HTML page (boilerplate, menus, comments removed).

    On the 181-page article extraction benchmark (benchmarks/html_extraction.py) trafilatura
    with `fast` (no fallback extractors; the default) scores F1 0.962 at 16 MB/s per core, its
    full mode 0.960 (0.964 with favor_precision) at ~10 MB/s; resiliparse 0.898 at ~120 MB/s,
    below the 0.95 this project requires. Code-heavy pages (the Python docs) run ~2 MB/s.
    """

    extractor: str = "trafilatura"
    fast: bool = True  # trafilatura only: skip the readability/jusText fallbacks
    favor_precision: bool = False  # trafilatura only
    include_tables: bool = True  # trafilatura only
    include_comments: bool = False  # trafilatura only (reader comments below articles)

    def __post_init__(self):
        check(self.extractor in EXTRACTORS,
              f"html_extract: extractor must be one of {EXTRACTORS}, got {self.extractor!r}")
        self._extract = None

    def _extractor(self):
        if self._extract is None:  # imported lazily: trafilatura's import costs ~0.5 s
            if self.extractor == "trafilatura":
                import trafilatura

                opts = dict(fast=self.fast, favor_precision=self.favor_precision,
                            include_tables=self.include_tables, include_comments=self.include_comments)
                self._extract = lambda html: trafilatura.extract(html, **opts) or ""
            else:
                from resiliparse.extract.html2text import extract_plain_text
                from resiliparse.parse.html import HTMLTree

                self._extract = lambda html: extract_plain_text(HTMLTree.parse(html), main_content=True)
        return self._extract

    def map(self, doc: Document) -> Document:
        if not doc.text.strip():
            raise Drop("empty_html")
        text = self._extractor()(doc.text)
        if not text.strip():
            raise Drop("no_main_text")
        return dataclasses.replace(doc, text=text)

    def __getstate__(self) -> dict[str, Any]:  # the extractor closure is rebuilt in the worker
        return {**self.__dict__, "_extract": None}


# C0/C1 control characters except tab and newline, plus BOM, zero-width and bidi controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# UTF-8 read as Latin-1/cp1252 shows a lead byte (U+00C2..U+00F4) followed by a continuation
# byte (U+0080..U+00BF, or its cp1252 character). Text without that pair has no such mojibake,
# so ftfy (~8 MB/s) runs only where it can help.
_CP1252_CONTINUATION = "\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d" \
                       "\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
_MOJIBAKE_HINT = re.compile(f"[\u00c2-\u00f4][\u0080-\u00bf{_CP1252_CONTINUATION}]")
_OTHER_SPACES = "\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
# Only runs that change: two or more spaces, or any other space character (matching every
# single space would make this the slowest step).
_SPACES = re.compile(f"[ {_OTHER_SPACES}]{{2,}}|[{_OTHER_SPACES}]")
_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85\x0b\x0c]")
_TRAILING_SPACE = re.compile(" +\n")


@register("unicode_fix")
@dataclasses.dataclass
class UnicodeFix(Mapper):
    """Repair mojibake (ftfy), normalise (NFC), drop control characters, tidy whitespace.

    Whitespace: line breaks -> "\\n", runs of spaces/tabs (any Unicode space) -> one space,
    spaces around line ends trimmed, at most `max_blank_lines` empty lines in a row.
    """

    ftfy: bool = True
    uncurl_quotes: bool = False  # keep typographic quotes; ftfy's default would straighten them
    normalization: str = "NFC"
    max_blank_lines: int = 2

    def __post_init__(self):
        check(self.normalization in ("NFC", "NFKC", "NFD", "NFKD", "none"),
              f"unicode_fix: normalization must be NFC, NFKC, NFD, NFKD or none, got {self.normalization!r}")
        check(self.max_blank_lines >= 0, "unicode_fix: max_blank_lines must be >= 0")
        self._blank_runs = re.compile("\n{%d,}" % (self.max_blank_lines + 2))

    def clean(self, text: str) -> str:
        if not text.isascii():  # ASCII text has no mojibake and is already NFC
            text = _SURROGATE.sub("\ufffd", text)
            if self.ftfy and _MOJIBAKE_HINT.search(text):
                import ftfy

                text = ftfy.fix_text(text, uncurl_quotes=self.uncurl_quotes, normalization=None)
            if self.normalization != "none":
                text = unicodedata.normalize(self.normalization, text)
        text = _LINE_BREAKS.sub("\n", text)
        text = _CONTROL.sub("", text)
        text = _SPACES.sub(" ", text)
        text = _TRAILING_SPACE.sub("\n", text).replace("\n ", "\n")
        text = self._blank_runs.sub("\n" * (self.max_blank_lines + 1), text)
        return text.strip()

    def map(self, doc: Document) -> Document:
        text = self.clean(doc.text)
        if not text:
            raise Drop("empty")
        return dataclasses.replace(doc, text=text)


EMOJI_MODES = ("keep", "demojize", "remove")
SYMBOL_MODES = ("keep", "name", "remove")


_NON_ASCII = re.compile("[^\x00-\x7f]")


@functools.cache
def _emoji_starts() -> frozenset[str]:
    """Every character that can start an emoji, as a cheap first check before `emoji` (~2 MB/s).

    Keycap emoji start with an ASCII "#", "*" or digit: their U+FE0F/U+20E3 tail finds them.
    """
    import emoji

    return frozenset(e[0] for e in emoji.EMOJI_DATA if not e[0].isascii()) | {"\ufe0f", "\u20e3"}


@register("emoji")
@dataclasses.dataclass
class EmojiToText(Mapper):
    """Emoji -> text names (":thumbs_up:"), removed or kept; other symbols (Unicode "So") likewise.

    Configure per source with the spec's `sources` key, e.g. keep emoji in chat data but
    demojize them in web text.
    """

    mode: str = "demojize"
    delimiters: list[str] = dataclasses.field(default_factory=lambda: [":", ":"])
    other_symbols: str = "keep"  # symbols that are not emoji (e.g. "\u265e"): keep, name or remove

    def __post_init__(self):
        check(self.mode in EMOJI_MODES, f"emoji: mode must be one of {EMOJI_MODES}, got {self.mode!r}")
        check(self.other_symbols in SYMBOL_MODES,
              f"emoji: other_symbols must be one of {SYMBOL_MODES}, got {self.other_symbols!r}")
        check(len(self.delimiters) == 2, "emoji: delimiters must be two strings, e.g. [':', ':']")

    def _symbol_text(self, symbol: str) -> str:
        if self.other_symbols == "remove":
            return ""
        name = unicodedata.name(symbol, "").lower().replace(" ", "_")
        return f"{self.delimiters[0]}{name}{self.delimiters[1]}" if name else symbol

    def convert(self, text: str) -> str:
        if text.isascii():
            return text
        import emoji

        chars = set(_NON_ASCII.findall(text))  # the few distinct non-ASCII characters
        if self.mode != "keep" and not chars.isdisjoint(_emoji_starts()):
            if self.mode == "demojize":
                text = emoji.demojize(text, delimiters=tuple(self.delimiters))
            else:
                text = emoji.replace_emoji(text, replace="")
            chars = set(_NON_ASCII.findall(text))
        if self.other_symbols != "keep":
            symbols = {c: self._symbol_text(c) for c in chars if unicodedata.category(c) == "So"}
            if symbols:
                text = text.translate(str.maketrans(symbols))
        return text

    def map(self, doc: Document) -> Document:
        text = self.convert(doc.text)
        if not text.strip():
            raise Drop("empty")
        return dataclasses.replace(doc, text=text) if text is not doc.text else doc
