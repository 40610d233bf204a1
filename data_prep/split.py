"""The split stage: marks every document train or val (`doc.meta["split"]`), deterministically."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from data_prep.config import Config
from data_prep.document import Document
from data_prep.stats import StageStats


def hash_fraction(seed: int, doc_id: str) -> float:
    """A number in [0, 1) fixed by (seed, document id): independent of order, stable across runs."""
    digest = hashlib.sha1(f"{seed}:{doc_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def position_cut(length: int, val_fraction: float) -> int:
    """Characters kept for train: the first int(length * (1 - val_fraction)), as nanoGPT cuts its text."""
    return int(length * (1.0 - val_fraction))


class SplitStage:
    """by: hash -> whole documents go to val with probability val_fraction (by their id);
    by: position -> each document is cut in two, its last val_fraction (in characters) to val.
    Cut parts get ids `<id>[:cut]` and `<id>[cut:]`; an empty document stays whole (in train).
    Copies a `mix` stage made (meta["repeat"], id "<id>#rep<k>") go where their original goes,
    so no val document is repeated in train. A document with meta["split_key"] is split by that key
    instead of its id, so documents sharing it stay together (the embedded instruction set holds
    out whole modules).
    """

    name = "split"

    def __init__(self, cfg: Config):
        self.seed = cfg.seed
        self.rules = {src.name: cfg.split_for(src) for src in cfg.sources}

    def __call__(self, docs: Iterable[Document], stats: StageStats) -> Iterator[Document]:
        for doc in docs:
            rule = self.rules[doc.source]
            if rule.by == "hash":
                key = doc.id.rsplit("#rep", 1)[0] if doc.meta.get("repeat") else doc.id
                key = doc.meta.get("split_key", key)
                parts = [(doc, "val" if hash_fraction(self.seed, key) < rule.val_fraction else "train")]
            else:
                cut = position_cut(len(doc.text), rule.val_fraction)
                if 0 < cut < len(doc.text):
                    parts = [(Document(doc.text[:cut], f"{doc.id}[:{cut}]", doc.source, dict(doc.meta)), "train"),
                             (Document(doc.text[cut:], f"{doc.id}[{cut}:]", doc.source, dict(doc.meta)), "val")]
                else:
                    parts = [(doc, "val" if cut == 0 and doc.text else "train")]
            for part, split in parts:
                part.meta["split"] = split
                stats.count(f"documents:{split}")
                yield part
