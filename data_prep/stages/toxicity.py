"""Drop toxic documents with a trained classifier, and report what the filter does to text about
each group (a filter that removes most documents mentioning a minority is a bias of its own).

`model` is a classifier file from `python -m jaxlm.eval.toxicity train` (jaxlm's hashed n-gram
logistic regression trained on ToxiGen's statements). Every document gets meta["toxicity"]
(P(toxic)); documents at or above `threshold` are removed ("toxic"). `groups` maps a group name to
terms (whole words, any case); the stage counts, per group, the documents that mention it and those
it removed, so the report shows each group's removal rate beside the overall one.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

from data_prep.document import Document
from data_prep.stages.base import Stage, StageStats, in_batches
from data_prep.stages.registry import StageConfigError, check, register
from jaxlm.data import text_classifier

KIND = "toxicity"  # the tag jaxlm.eval.toxicity saves its classifier under


@register("toxicity_filter")
@dataclasses.dataclass
class ToxicityFilter(Stage):
    model: str = ""
    threshold: float = 0.5
    groups: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check(bool(self.model), "toxicity_filter: set 'model' to a classifier from `python -m jaxlm.eval.toxicity train`")
        check(0.0 < self.threshold <= 1.0, "toxicity_filter: threshold must be in (0, 1]")
        if not pathlib.Path(self.model).is_file():
            raise StageConfigError(f"toxicity_filter: model {self.model!r} not found")
        try:
            self._model = text_classifier.load(self.model, KIND)
        except ValueError as e:
            raise StageConfigError(f"toxicity_filter: {e}") from None
        self._groups = {g: re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE)
                        for g, terms in self.groups.items() if terms}

    def __call__(self, docs, stats: StageStats):
        for batch in in_batches(docs):
            yield from self._apply(batch, stats)

    def _apply(self, batch: list[Document], stats: StageStats):
        scored = [d.text for d in batch if self.applies_to(d)]
        scores = iter(self._model.scores(scored).tolist() if scored else [])
        for doc in batch:
            if not self.applies_to(doc):  # a source this stage leaves alone
                yield doc
                continue
            score = next(scores)
            doc.meta["toxicity"] = round(score, 4)
            toxic = score >= self.threshold
            for group, pattern in self._groups.items():
                if pattern.search(doc.text):
                    stats.count(f"group:{group}:seen")
                    stats.count(f"group:{group}:removed", int(toxic))
            if toxic:
                stats.remove(doc, "toxic")
            else:
                yield doc
