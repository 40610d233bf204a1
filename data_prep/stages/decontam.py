"""Decontamination: remove evaluation text from the training data (GPT-3, Brown et al. 2020, App. C).

An index of every `ngram`-word n-gram (13 by default; lower-cased, punctuation stripped) of
the evaluation sets is built once (the reduce step; no map step). Then per document:
- policy "drop": a document holding any indexed n-gram is removed;
- policy "cut": each matching span is cut out with `margin` characters either side, the
  remaining fragments shorter than `min_fragment_chars` are dropped, and a document cut more
  than `max_cuts` times is removed whole. Fragments become documents "<id>#part<k>".
Hits are counted per evaluation set (counters "docs_hit:<set>").

Evaluation files: .jsonl (each record's string fields, joined, is one example), or text
(.txt and anything else: each blank-line-separated paragraph is one example).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import pathlib
import re
from typing import Any, Iterator

import numpy as np

from data_prep.document import Document
from data_prep.stages import minhash
from data_prep.stages.base import GlobalStage, StageStats
from data_prep.stages.files import atomic_save_npz, load_npz
from data_prep.stages.registry import StageConfigError, check, register

_WORD = re.compile(r"[^\W_]+")  # the words of text.normalize_for_dedup, with their positions
MAX_EVAL_SETS = 64  # one bit per set in the index


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def eval_examples(path: pathlib.Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        if name.endswith(".jsonl"):
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield " ".join(_strings(json.loads(line)))
                    except json.JSONDecodeError:
                        raise StageConfigError(f"decontaminate: {path}:{number} is not valid JSON") from None
        else:
            yield from (p for p in re.split(r"\n\s*\n", f.read()) if p.strip())


@register("decontaminate")
@dataclasses.dataclass
class Decontaminate(GlobalStage):
    eval_sets: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> file path or glob
    ngram: int = 13
    policy: str = "drop"
    margin: int = 200
    min_fragment_chars: int = 200
    max_cuts: int = 10

    has_map = False

    def __post_init__(self):
        check(bool(self.eval_sets), "decontaminate: set 'eval_sets' to {name: path or glob of evaluation files}")
        check(len(self.eval_sets) <= MAX_EVAL_SETS, f"decontaminate: at most {MAX_EVAL_SETS} eval sets")
        check(self.policy in ("drop", "cut"), f"decontaminate: policy must be 'drop' or 'cut', got {self.policy!r}")
        check(self.ngram >= 1, "decontaminate: ngram must be >= 1")
        self._files = {}
        for name, pattern in self.eval_sets.items():
            files = sorted(pathlib.Path(p) for p in glob.glob(str(pattern)) if pathlib.Path(p).is_file())
            check(bool(files), f"decontaminate: eval set {name!r}: no file matches {pattern!r}")
            self._files[name] = files

    def build_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique n-gram hashes, (same length,) uint64 bit mask of the sets holding each)."""
        hashes, masks = [], []
        for bit, (name, files) in enumerate(self._files.items()):
            for file in files:
                examples = list(eval_examples(file))
                h, _ = minhash.shingle_hashes(examples, self.ngram, short_docs=False)
                hashes.append(np.unique(h))
                masks.append(np.full(len(hashes[-1]), 1 << bit, np.uint64))
        if not hashes:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        h, m = np.concatenate(hashes), np.concatenate(masks)
        unique, inverse = np.unique(h, return_inverse=True)
        mask = np.zeros(len(unique), np.uint64)
        np.bitwise_or.at(mask, inverse, m)
        return unique, mask

    def reduce(self, state_dir, world_size):
        index, mask = self.build_index()
        atomic_save_npz(pathlib.Path(state_dir) / "index.npz", hashes=index, masks=mask)
        per_set = {name: int(((mask >> np.uint64(bit)) & np.uint64(1)).sum())
                   for bit, name in enumerate(self._files)}
        return {"ngram": self.ngram, "policy": self.policy, "indexed_ngrams": int(len(index)),
                "ngrams_per_eval_set": per_set}

    def load(self, state_dir, rank):
        index = load_npz(pathlib.Path(state_dir) / "index.npz")
        self._index, self._masks = index["hashes"], index["masks"]

    def _lookup(self, hashes: np.ndarray) -> np.ndarray:
        """(len(hashes),) uint64 eval-set masks; 0 where the n-gram is in no eval set."""
        if not len(self._index):
            return np.zeros(len(hashes), np.uint64)
        pos = np.minimum(np.searchsorted(self._index, hashes), len(self._index) - 1)
        return np.where(self._index[pos] == hashes, self._masks[pos], np.uint64(0))

    def _count_hits(self, mask: int, stats: StageStats) -> None:
        for bit, name in enumerate(self._files):
            if mask >> bit & 1:
                stats.count(f"docs_hit:{name}")

    def __call__(self, docs, stats: StageStats):
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) == 256:
                yield from self._apply(batch, stats)
                batch = []
        yield from self._apply(batch, stats)

    def _apply(self, batch: list[Document], stats: StageStats) -> Iterator[Document]:
        if not batch:
            return
        hashes, offsets = minhash.shingle_hashes([d.text for d in batch], self.ngram, short_docs=False)
        hits = self._lookup(hashes)
        for i, doc in enumerate(batch):
            doc_hits = hits[offsets[i]: offsets[i + 1]]
            if not doc_hits.any():
                yield doc
                continue
            self._count_hits(int(np.bitwise_or.reduce(doc_hits)), stats)
            if self.policy == "drop":
                stats.remove(doc, "contaminated")
            else:
                yield from self._cut(doc, stats)

    def _cut(self, doc: Document, stats: StageStats) -> Iterator[Document]:
        words = list(_WORD.finditer(doc.text))
        hashes, _ = minhash.shingle_hashes([" ".join(w.group().lower() for w in words)], self.ngram, short_docs=False)
        matched = np.flatnonzero(self._lookup(hashes))  # first word of each matching n-gram
        spans = []  # character spans to cut, merged
        for i in matched.tolist():
            lo = max(words[i].start() - self.margin, 0)
            hi = min(words[i + self.ngram - 1].end() + self.margin, len(doc.text))
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], hi)
            else:
                spans.append([lo, hi])
        stats.count("spans_cut", len(spans))
        if len(spans) > self.max_cuts:
            stats.remove(doc, "too_many_cuts")
            return
        bounds = [0] + [x for span in spans for x in span] + [len(doc.text)]
        fragments = [doc.text[bounds[k]: bounds[k + 1]].strip() for k in range(0, len(bounds), 2)]
        kept = [f for f in fragments if len(f) >= self.min_fragment_chars]
        stats.count("fragments_dropped", len(fragments) - len(kept))
        if not kept:
            stats.remove(doc, "cut_to_nothing")
            return
        for k, text in enumerate(kept):
            yield Document(text=text, id=f"{doc.id}#part{k}", source=doc.source,
                           meta={**doc.meta, "decontam_part": k})
