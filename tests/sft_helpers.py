"""Test helper (no tests here): a tiny SentencePiece model trained in-process, with or without the chat tokens."""

from __future__ import annotations

import io

import sentencepiece as spm

from data_prep.config import TokenizerConfig
from data_prep.tokenizer import trainer_options
from jaxlm.data.chat import SPECIAL_TOKENS

TEXT = [
    "What does json.dumps do? Serialize obj to a JSON formatted str.",
    "The capital of France is Paris. Rivers flow into the sea.",
    ">>> import math\n>>> math.sqrt(16)\n4.0",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "def f(x):\n    return x * 2  # doubles x",
    "naïve café, 日本語 and emoji 😀 are text too.",
] * 20


def train_tokenizer(path, *, chat_tokens: bool = True, vocab_size: int = 500) -> str:
    """Writes a BPE model to `path` as data_prep trains them (identity normalisation, '\\n' a piece)."""
    cfg = TokenizerConfig(vocab_size=vocab_size, user_defined_symbols=list(SPECIAL_TOKENS) if chat_tokens else [])
    writer = io.BytesIO()
    opts = trainer_options(cfg)
    opts["minloglevel"] = 2
    spm.SentencePieceTrainer.train(sentence_iterator=iter(line for t in TEXT for line in t.split("\n")),
                                   model_writer=writer, **opts)
    with open(path, "wb") as f:
        f.write(writer.getvalue())
    return str(path)
