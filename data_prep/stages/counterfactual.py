"""Counterfactual data augmentation (CDA): swap gendered words, so the corpus says of one gender
what it says of the other (Lu et al. 2020; Zmigrod et al. 2019 for the practice).

`pairs` names a file of "word<TAB>word" lines (e.g. WinoBias' generalized_swaps.txt); a pair given
one way only is also used the other way round, unless that word has a mapping of its own. `names`
optionally names a file of "name<TAB>name" lines swapped the same way. Matching is on whole words,
case-insensitive, and the replacement keeps the case pattern (he -> she, He -> She, HE -> SHE).

Pronouns whose counterpart depends on grammar are handled here, not by the list: "her" is "his"
before a noun and "him" otherwise (object: before punctuation, the end, or a function word);
"his" is "hers" when it stands alone (before punctuation or the end), else "her"; "hers" is "his".

mode "two_sided" keeps every document and adds its swapped copy (id + "#cda") when anything was
swapped; the copy goes to the split its original goes to, so no val document's copy is trained on.
"one_sided" replaces the document with its swapped version. `keep_unswapped: false` drops documents
with nothing to swap, leaving only gendered text in both versions: a set to fine-tune a trained
model on (docs/safety.md).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Iterable, Iterator

from data_prep.document import Document
from data_prep.stages.base import Stage, StageStats
from data_prep.stages.registry import StageConfigError, check, register

MODES = ("two_sided", "one_sided")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?\.?")
# Words after which "her" is an object ("told her that", "gave her a book"), not a possessive.
_AFTER_OBJECT = frozenset("""a an the this that these those to and or but so if as at by for from in into
of on onto with without about after before than then when while because is was are were be been
will would can could should may might must do does did has have had not up down out off over""".split())


def read_pairs(path: str, what: str) -> dict[str, str]:
    file = pathlib.Path(path)
    if not file.is_file():
        raise StageConfigError(f"counterfactual: {what} file {path!r} not found (lines of 'word<TAB>word')")
    mapping: dict[str, str] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip().lower() for p in line.split("\t")]
        if len(parts) != 2 or not all(parts):
            raise StageConfigError(f"counterfactual: {path}:{number} is not 'word<TAB>word': {line!r}")
        mapping.setdefault(parts[0], parts[1])
    for a, b in list(mapping.items()):
        mapping.setdefault(b, a)
    return mapping


def match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[0].isupper():
        return word[0].upper() + word[1:]
    return word


def swap(text: str, mapping: dict[str, str]) -> tuple[str, int]:
    """(the text with every mapped word swapped, number of swaps)."""
    tokens = list(_WORD.finditer(text))
    out, last, swaps = [], 0, 0
    for i, m in enumerate(tokens):
        word = m.group(0)
        # a full stop is part of the word only for entries such as "mr."; otherwise it ends a clause
        core, dot = (word[:-1], ".") if word.endswith(".") and word.lower() not in mapping else (word, "")
        key = core.lower()
        after = text[m.end():tokens[i + 1].start()] if i + 1 < len(tokens) else text[m.end():]
        next_word = tokens[i + 1].group(0).lower() if i + 1 < len(tokens) else None
        ends_clause = bool(dot) or next_word is None or any(c in after for c in ".,;:!?)\"\n")
        if key == "her":
            target = "him" if ends_clause or next_word in _AFTER_OBJECT else "his"
        elif key == "his":
            target = "hers" if ends_clause else "her"
        elif key == "hers":
            target = "his"
        elif key in mapping:
            target = mapping[key]
        else:
            continue
        out.append(text[last:m.start()])
        out.append(match_case(target, core) + dot)
        last, swaps = m.end(), swaps + 1
    out.append(text[last:])
    return "".join(out), swaps


@register("counterfactual")
@dataclasses.dataclass
class CounterfactualAugmentation(Stage):
    pairs: str = ""  # "word<TAB>word" lines, e.g. WinoBias' generalized_swaps.txt
    names: str = ""  # optional "name<TAB>name" lines
    mode: str = "two_sided"
    keep_unswapped: bool = True  # false: drop documents without a gendered word

    def __post_init__(self):
        check(bool(self.pairs), "counterfactual: set 'pairs' to a file of 'word<TAB>word' lines")
        check(self.mode in MODES, f"counterfactual: mode must be one of {MODES}, got {self.mode!r}")
        self._mapping = read_pairs(self.pairs, "pairs")
        if self.names:
            for a, b in read_pairs(self.names, "names").items():
                self._mapping.setdefault(a, b)

    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        for doc in docs:
            if not self.applies_to(doc):
                yield doc
                continue
            text, swaps = swap(doc.text, self._mapping)
            stats.count("documents_swapped" if swaps else "documents_unswapped")
            if not swaps and not self.keep_unswapped:
                stats.remove(doc, "no_gendered_word")
                continue
            if self.mode == "one_sided":
                yield dataclasses.replace(doc, text=text, meta={**doc.meta, "cda_swaps": swaps})
                continue
            yield doc
            if swaps:
                yield Document(text, f"{doc.id}#cda", doc.source,
                               {**doc.meta, "cda_swaps": swaps, "split_key": doc.meta.get("split_key", doc.id)})
