"""A model ready to evaluate: config, parameters, graph, tokenizer and context window, from a
training workdir (its latest valid checkpoint) or from a Hugging Face checkpoint folder."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional

import jax
from flax import nnx

from jaxlm import storage
from jaxlm.config import Config, ModelConfig
from jaxlm.eval.errors import EvalError
from jaxlm.eval.tokenizer import Tokenizer
from jaxlm.train.checkpoint_reader import read_params


@dataclasses.dataclass
class EvalModel:
    model_cfg: ModelConfig
    params: dict
    graphdef: Any
    tokenizer: Optional[Tokenizer]
    window: int  # longest input the model is evaluated on
    config: Optional[Config] = None  # the run's config, when it came from a workdir

    @property
    def eos_id(self) -> Optional[int]:
        return self.tokenizer.eos_id if self.tokenizer is not None else None


def graphdef_of(model_cfg: ModelConfig):
    from jaxlm.model import Transformer

    return nnx.graphdef(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))))


def window_of(config: Config) -> int:
    """A trained model is evaluated at the length it was trained on (gpt2: also its position table)."""
    return min(config.data.seq_len, config.model.max_seq_len)


def check_tokenizer(tokenizer: Tokenizer, model_cfg: ModelConfig, where: str) -> None:
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise EvalError(f"{where}: the tokenizer has {tokenizer.vocab_size} pieces but the model only "
                        f"{model_cfg.vocab_size} embeddings; this checkpoint was trained with another tokenizer")


def from_params(config: Config, params: dict, tokenizer: Optional[Tokenizer] = None,
                window: Optional[int] = None) -> EvalModel:
    """An EvalModel of parameters in memory (e.g. the trainer's), checked against the config."""
    from jaxlm.interop.hf import InteropError, check_params

    try:
        check_params(config.model, params, "the checkpoint's parameters")
    except InteropError as e:
        raise EvalError(str(e)) from None
    if tokenizer is None and config.data.sources:
        tokenizer = Tokenizer.from_dataset(config.data.sources[0].path)
    if tokenizer is not None:
        check_tokenizer(tokenizer, config.model, "config data.sources[0]")
    return EvalModel(config.model, params, graphdef_of(config.model), tokenizer, window or window_of(config), config)


class _OrbaxNotices(logging.Filter):
    """Drops Orbax's warnings (through absl) about opening checkpoints read-only and restoring
    without target shardings: every sample/eval/export printed them, and reading a finished run
    read-only is what these commands mean to do. jaxlm's own warnings and any error still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname


_ORBAX_NOTICES = _OrbaxNotices()


def load_workdir(workdir: str, window: Optional[int] = None) -> EvalModel:
    """The latest valid checkpoint of a training run, with the tokenizer of its first data source."""
    logging.getLogger("absl").addFilter(_ORBAX_NOTICES)  # once: a logger keeps one copy of a filter
    if not storage.isdir(workdir):  # a local folder or gs://BUCKET/PATH
        raise EvalError(f"workdir {workdir!r} does not exist; give the folder a training run wrote "
                        "(it holds config.yaml and checkpoints/)")
    config, params = read_params(workdir)
    return from_params(config, params, window=window)


def load_hf_dir(hf_dir: str, window: Optional[int] = None, tokenizer_file: Optional[str] = None) -> EvalModel:
    """A transformers checkpoint folder (e.g. one `jaxlm.export` wrote, which ships tokenizer.model)."""
    from jaxlm.interop.hf import InteropError, load_hf

    try:
        model_cfg, params = load_hf(hf_dir)
    except InteropError as e:
        raise EvalError(str(e)) from None
    tokenizer_file = tokenizer_file or os.path.join(hf_dir, "tokenizer.model")
    tokenizer = None
    if os.path.isfile(tokenizer_file):
        add_bos = _hf_adds_bos(hf_dir)
        tokenizer = Tokenizer(tokenizer_file, add_bos)
        check_tokenizer(tokenizer, model_cfg, hf_dir)
    params = jax.device_put(params)
    return EvalModel(model_cfg, params, graphdef_of(model_cfg), tokenizer, window or model_cfg.max_seq_len)


def _hf_adds_bos(hf_dir: str) -> bool:
    import json

    path = os.path.join(hf_dir, "tokenizer_config.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return bool(json.load(f).get("add_bos_token", False))
