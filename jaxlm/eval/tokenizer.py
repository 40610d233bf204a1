"""The SentencePiece tokenizer a dataset was made with, as the evaluation code needs it.

Training records are `[BOS] + tokens + EOS` (BOS only when the dataset was made with
`tokenizer.add_bos`), so a text's first token is predicted from BOS when there is one and is
otherwise context only: nothing in training ever predicted a document's first token.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import sentencepiece as spm

from jaxlm.data.format import DataFormatError
from jaxlm.data.remote import local_dataset
from jaxlm.eval.errors import EvalError


class Tokenizer:
    def __init__(self, model_file: str, add_bos: bool = False):
        if not os.path.isfile(model_file):
            raise EvalError(f"tokenizer {model_file!r} does not exist; a data_prep output folder holds "
                            "tokenizer.model beside manifest.json")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=model_file)
        except (OSError, RuntimeError) as e:
            raise EvalError(f"{model_file!r} is not a SentencePiece model ({e})") from None
        self.model_file = model_file
        self.add_bos = add_bos and self.sp.bos_id() >= 0
        self.vocab_size = self.sp.vocab_size()
        self.bos_id: Optional[int] = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id: Optional[int] = self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    @classmethod
    def from_dataset(cls, dataset_dir: str) -> "Tokenizer":
        """The tokenizer of a data_prep output folder (local, or on Cloud Storage: its local copy),
        with its manifest's add_bos."""
        try:
            dataset_dir = local_dataset(dataset_dir)
        except DataFormatError as e:
            raise EvalError(str(e)) from None
        add_bos = False
        manifest = os.path.join(dataset_dir, "manifest.json")
        if os.path.isfile(manifest):
            with open(manifest, encoding="utf-8") as f:
                add_bos = bool(json.load(f).get("tokenizer", {}).get("add_bos", False))
        return cls(os.path.join(dataset_dir, "tokenizer.model"), add_bos)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def prefix(self) -> list[int]:
        """Tokens put before a text so its first token is predicted as in training ([BOS] or none)."""
        return [self.bos_id] if self.add_bos else []
