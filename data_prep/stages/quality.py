"""A learned quality filter (GPT-3, Brown et al. 2020, App. A): logistic regression on hashed
word 1- and 2-gram features, high-quality reference text (positives) against raw web text.

map: a seeded sample of the pipeline's own documents (the negatives, unless `negatives`
names files). reduce: train on a balanced set, report accuracy on a held-out 20%, save the
weights (.npz). apply: score every document (meta["quality_score"], P(high quality)) and
- action "threshold": drop documents scoring below `threshold`;
- action "pareto": GPT-3's rule, keep when a Pareto(alpha) draw > 1 - score (seeded by id),
  which keeps some low-scoring text for diversity;
- action "annotate": keep all; downstream mixing can weight by the score.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import pathlib
import re
from typing import Any

import numpy as np

from data_prep.document import Document
from data_prep.stages.base import GlobalStage, StageStats, in_batches
from data_prep.stages.files import (atomic_save_npz, atomic_write_json, load_npz, read_documents,
                                    write_documents)
from data_prep.stages.mixing import uniform
from data_prep.stages.registry import StageConfigError, check, register
from jaxlm.data.text_classifier import LogisticModel, train_logistic

ACTIONS = ("threshold", "pareto", "annotate")


def read_texts(patterns: list[str], what: str) -> list[tuple[str, str]]:
    """(id, text) pairs from .jsonl(.gz) files ("text" field) or text files (blank-line paragraphs)."""
    out = []
    for pattern in patterns:
        files = sorted(p for p in glob.glob(pattern) if pathlib.Path(p).is_file())
        if not files:
            raise StageConfigError(f"quality_classifier: no {what} file matches {pattern!r}")
        for file in files:
            opener = gzip.open if file.endswith(".gz") else open
            with opener(file, "rt", encoding="utf-8", errors="replace") as f:
                if re.search(r"\.jsonl(\.gz)?$", file):
                    for number, line in enumerate(f, 1):
                        if line.strip():
                            row = json.loads(line)
                            if not isinstance(row.get("text"), str):
                                raise StageConfigError(f"quality_classifier: {file}:{number} has no 'text' string")
                            out.append((f"{file}:{number}", row["text"]))
                else:
                    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", f.read()) if p.strip()]
                    out.extend((f"{file}:{i}", p) for i, p in enumerate(paragraphs))
    return out


@register("quality_classifier")
@dataclasses.dataclass
class QualityClassifier(GlobalStage):
    reference: list[str] = dataclasses.field(default_factory=list)  # high-quality text: files or globs
    negatives: list[str] = dataclasses.field(default_factory=list)  # raw web text; default: sample the stream
    sample_rate: float = 0.05  # share of the stream's documents sampled as negatives
    max_train_docs: int = 20_000  # per class
    min_train_docs: int = 50  # per class; fewer fails the run with a clear message
    held_out: float = 0.2
    feature_bits: int = 18
    l2: float = 1e-4
    steps: int = 300
    action: str = "threshold"
    threshold: float = 0.5
    pareto_alpha: float = 9.0
    seed: int = 0

    def __post_init__(self):
        check(bool(self.reference), "quality_classifier: set 'reference' to files of high-quality text")
        check(self.action in ACTIONS, f"quality_classifier: action must be one of {ACTIONS}, got {self.action!r}")
        check(0 < self.sample_rate <= 1 and 0 < self.held_out < 1, "quality_classifier: sample_rate and held_out in (0, 1)")
        check(8 <= self.feature_bits <= 24, "quality_classifier: feature_bits must be in [8, 24]")
        self.has_map = not self.negatives

    def map_task(self, docs, rank, state_dir):
        sample = []
        for doc in docs:
            if uniform(self.seed, doc.id) < self.sample_rate:
                sample.append(doc)
            yield doc
        write_documents(pathlib.Path(state_dir) / f"sample-{rank:05d}.jsonl", sample)

    def _negatives(self, state_dir: pathlib.Path, world_size: int) -> list[tuple[str, str]]:
        if self.negatives:
            return read_texts(self.negatives, "negatives")
        docs = [d for r in range(world_size) for d in read_documents(state_dir / f"sample-{r:05d}.jsonl")]
        docs.sort(key=lambda d: uniform(self.seed + 1, d.id))  # a task-layout-free subset
        return [(d.id, d.text) for d in docs]

    def reduce(self, state_dir, world_size) -> dict[str, Any]:
        state_dir = pathlib.Path(state_dir)
        pos = read_texts(self.reference, "reference")
        neg = self._negatives(state_dir, world_size)
        n = min(len(pos), len(neg), self.max_train_docs)
        if n < self.min_train_docs:
            raise StageConfigError(
                f"quality_classifier: only {len(pos)} reference and {len(neg)} negative documents; need "
                f">= {self.min_train_docs} of each (add reference text, raise sample_rate or set negatives)")
        pos = sorted(pos, key=lambda x: uniform(self.seed + 2, x[0]))[:n]
        neg = neg[:n]
        rows = [(i, t, 1) for i, t in pos] + [(i, t, 0) for i, t in neg]
        test = np.array([uniform(self.seed + 3, f"{y}:{i}") < self.held_out for i, _, y in rows])
        texts = [t for _, t, _ in rows]
        labels = np.array([y for _, _, y in rows])
        train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
        model = train_logistic([texts[i] for i in train_idx], labels[train_idx], self.feature_bits,
                               self.l2, self.steps)
        accuracy = lambda idx: float(((model.scores([texts[i] for i in idx]) >= 0.5) == labels[idx]).mean())
        atomic_save_npz(state_dir / "model.npz", weights=model.weights, bias=np.float64(model.bias))
        report = {"train_docs": int(len(train_idx)), "held_out_docs": int(len(test_idx)),
                  "train_accuracy": round(accuracy(train_idx), 4),
                  "held_out_accuracy": round(accuracy(test_idx), 4) if len(test_idx) else None,
                  "action": self.action}
        atomic_write_json(state_dir / "model.json", report)
        return report

    def load(self, state_dir, rank):
        data = load_npz(pathlib.Path(state_dir) / "model.npz")
        self._model = LogisticModel(data["weights"], float(data["bias"]))

    def keep(self, doc: Document, score: float) -> bool:
        if self.action == "threshold":
            return score >= self.threshold
        if self.action == "pareto":  # inverse CDF of numpy's pareto (Lomax): (1-u)^(-1/a) - 1
            draw = (1.0 - uniform(self.seed + 4, doc.id)) ** (-1.0 / self.pareto_alpha) - 1.0
            return draw > 1.0 - score
        return True

    def __call__(self, docs, stats: StageStats):
        for batch in in_batches(docs):
            yield from self._apply(batch, stats)

    def _apply(self, batch: list[Document], stats: StageStats):
        for doc, score in zip(batch, self._model.scores([d.text for d in batch]).tolist()):
            doc.meta["quality_score"] = round(score, 4)
            if self.keep(doc, score):
                yield doc
            else:
                stats.remove(doc, "low_quality")
