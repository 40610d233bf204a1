"""Tiny real components for the eval, generation and interop tests: a SentencePiece tokenizer trained
on the spot with data_prep's options, random models of both families, a dataset-like folder."""

import io
import json
import os

import sentencepiece as spm
from flax import nnx

from data_prep.config import TokenizerConfig
from data_prep.tokenizer import trainer_options
from jaxlm.config import config_from_dict
from jaxlm.model import Transformer

CORPUS = """The quick brown fox jumps over the lazy dog. A man is sitting on a roof.
She bends down and grabs the pole, then lifts the weight over her head.
Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day.
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
Question: Which statement best explains why photosynthesis is the foundation of most food webs?
Answer: Sunlight is the source of energy for nearly all ecosystems.
""" * 3


def make_tokenizer_dir(path, vocab_size=360, add_bos=False) -> str:
    """A folder with tokenizer.model and a manifest.json tokenizer block, like data_prep writes."""
    os.makedirs(path, exist_ok=True)
    cfg = TokenizerConfig(vocab_size=vocab_size, num_threads=1)
    opts = trainer_options(cfg)
    opts.update(minloglevel=2)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS.split("\n")), model_writer=writer, **opts)
    with open(os.path.join(path, "tokenizer.model"), "wb") as f:
        f.write(writer.getvalue())
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"tokenizer": {"add_bos": add_bos}}, f)
    return path


def tiny_config(family="llama", vocab_size=360, seq_len=64, data_path=None, **model):
    m = dict(family=family, vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4,
             n_kv_heads=2 if family == "llama" else None, max_seq_len=seq_len, init_std=0.2)
    m.update(model)
    sources = [dict(path=data_path)] if data_path else []  # a folder with the tokenizer, when one is needed
    return config_from_dict(dict(data=dict(sources=sources, seq_len=seq_len), model=m))


def random_params(model_cfg, seed=0):
    model = Transformer(model_cfg, rngs=nnx.Rngs(seed))
    return model, nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model))
