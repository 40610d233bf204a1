"""Which benchmark items may have been seen in training: 13-gram overlap with the training text.

N-grams are hashed exactly as data_prep's `decontaminate` stage hashes them (its words: lower-cased,
punctuation stripped; `jaxlm.data.texthash.shingle_hashes`, which that stage uses too), so the two agree on what a
match is. That stage indexes the evaluation sets to clean the training data; here the index goes
the other way: it holds the n-grams of the TRAINING text, and an item is contaminated when any
n-gram of its text (prompt and gold answer, without demonstrations) is in it.

    python -m jaxlm.eval.contamination --dataset data/demo --out train_13grams.npz

writes the index (`hashes`: sorted unique uint64, `ngram`: n) of a data_prep folder's train split.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Sequence

import numpy as np

from jaxlm.data.format import DataFormatError, record_tokens
from jaxlm.data.shards import DocumentSource, open_dataset
from jaxlm.data.texthash import shingle_hashes
from jaxlm.eval.errors import EvalError
from jaxlm.eval.tokenizer import Tokenizer

NGRAM = 13


def ngram_hashes(texts: Sequence[str], n: int = NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): text i's n-gram hashes are hashes[offsets[i]:offsets[i+1]] (none if < n words)."""
    return shingle_hashes(list(texts), n, short_docs=False)


class NgramIndex:
    def __init__(self, hashes: np.ndarray, n: int = NGRAM):
        self.hashes = np.unique(np.asarray(hashes, np.uint64))
        self.n = n

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = NGRAM, chunk: int = 256) -> "NgramIndex":
        parts, batch = [], []
        for text in texts:
            batch.append(text)
            if len(batch) == chunk:
                parts.append(np.unique(ngram_hashes(batch, n)[0]))
                batch = []
        if batch:
            parts.append(np.unique(ngram_hashes(batch, n)[0]))
        return cls(np.concatenate(parts) if parts else np.zeros(0, np.uint64), n)

    @classmethod
    def load(cls, path: str) -> "NgramIndex":
        try:
            with np.load(path, allow_pickle=False) as f:
                hashes = f["hashes"]
                n = int(f["ngram"]) if "ngram" in f.files else NGRAM
        except (OSError, KeyError, ValueError) as e:
            raise EvalError(f"contamination index {path!r} is not readable ({e}); make one with "
                            "`python -m jaxlm.eval.contamination --dataset DIR --out FILE.npz`") from None
        return cls(hashes, n)

    def save(self, path: str) -> None:
        np.savez(path, hashes=self.hashes, ngram=np.int64(self.n))

    def contaminated(self, texts: Sequence[str]) -> list[bool]:
        """Per text: does any of its n-grams occur in the index?"""
        hashes, offsets = ngram_hashes(texts, self.n)
        if not len(self.hashes) or not len(hashes):
            return [False] * len(texts)
        pos = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        hit = self.hashes[pos] == hashes
        return [bool(hit[offsets[i]:offsets[i + 1]].any()) for i in range(len(texts))]


def dataset_texts(dataset_dir: str, split: str = "train") -> Iterable[str]:
    """The decoded documents of a data_prep split."""

    try:
        docs = DocumentSource(open_dataset(dataset_dir), split)
    except DataFormatError as e:
        raise EvalError(str(e)) from None
    tok = Tokenizer.from_dataset(dataset_dir)
    for i in range(len(docs)):
        yield tok.decode(record_tokens(docs[i]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxlm.eval.contamination", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, action="append", help="data_prep output folder (repeatable)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--ngram", type=int, default=NGRAM)
    parser.add_argument("--out", required=True, help="index file to write (.npz)")
    args = parser.parse_args(argv)
    try:
        texts = (t for d in args.dataset for t in dataset_texts(d, args.split))
        index = NgramIndex.from_texts(texts, args.ngram)
        index.save(args.out)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(index.hashes)} distinct {args.ngram}-grams")
    return 0


if __name__ == "__main__":
    sys.exit(main())
