"""Language identification with py3langid: its model ships inside the wheel (numpy arrays in an
LZMA file, no pickle), so it runs offline; 97 languages, ~3 MB/s per core."""

from __future__ import annotations

import dataclasses
import functools

from data_prep.document import Document
from data_prep.stages.base import Filter
from data_prep.stages.registry import check, register


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> list[str]:
    return sorted(set(_identifier().nb_classes))


def identify(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of `text`'s language."""
    lang, prob = _identifier().classify(text.replace("\n", " "))
    return str(lang), float(prob)


@register("language")
@dataclasses.dataclass
class LanguageFilter(Filter):
    """Keeps documents in `languages` with probability >= `min_score` (FineWeb: en, 0.65).

    The language and its probability go into meta["language"], meta["language_score"].
    Only the first `max_chars` characters are classified: enough for a confident answer,
    and a 100 MB document costs no more than a long one.
    """

    languages: list[str] = dataclasses.field(default_factory=lambda: ["en"])
    min_score: float = 0.65
    max_chars: int = 20_000

    def __post_init__(self):
        check(0.0 <= self.min_score <= 1.0, "language: min_score must be in [0, 1]")
        unknown = sorted(set(self.languages) - set(known_languages()))
        check(not unknown, f"language: unknown language codes {unknown}; "
                           f"known: {', '.join(known_languages())}")

    def reject(self, doc: Document) -> str | None:
        lang, score = identify(doc.text[: self.max_chars])
        doc.meta["language"], doc.meta["language_score"] = lang, round(score, 4)
        if lang not in self.languages:
            return "other_language"
        if score < self.min_score:
            return "low_score"
        return None
