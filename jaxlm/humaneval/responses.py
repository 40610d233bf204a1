"""Responses of a model (a jaxlm workdir or a transformers folder) to a round's prompts, generated
once, up front, with a progress bar. Errors of loading and generation come out as HumanEvalError
naming the system."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Sequence

from tqdm import tqdm

from jaxlm.config import ConfigError
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.loading import load_hf_dir, load_workdir
from jaxlm.humaneval.chat import find_chat_format, model_input
from jaxlm.humaneval.errors import HumanEvalError
from jaxlm.humaneval.inputs import Prompt
from jaxlm.interop import InteropError


def sampling_config(**fields) -> SamplingConfig:
    cfg = SamplingConfig(**{k: tuple(v) if k == "stop" else v for k, v in fields.items()})
    try:
        cfg.check()
    except EvalError as e:
        raise HumanEvalError(str(e)) from None
    return cfg


def generate(name: str, path: str, kind: str, prompts: Sequence[Prompt], samples: int, sampling: SamplingConfig,
             batch_size: int = 8) -> list[list[str]]:
    """[prompt][sample] response texts of the model at `path` (`kind` "workdir" or "hf")."""
    try:
        return _generate(name, path, kind, prompts, samples, sampling, batch_size)
    except (EvalError, InteropError, ConfigError) as e:
        raise HumanEvalError(f"system {name!r} ({path}): {e}") from None


def _generate(name, path, kind, prompts, samples, sampling, batch_size):
    em = load_workdir(path) if kind == "workdir" else load_hf_dir(path)
    tok = em.tokenizer
    if tok is None:
        raise EvalError(f"{path} has no tokenizer.model to turn prompts into tokens")
    chat = find_chat_format(path, os.path.dirname(tok.model_file))
    if chat is not None and chat.end_of_turn:
        sampling = dataclasses.replace(sampling, stop=tuple(sampling.stop) + (chat.end_of_turn,))
    eos = tok.sp.id_to_piece(tok.eos_id) if tok.eos_id is not None else ""
    inputs = [model_input(p, chat, eos) for p in prompts for _ in range(samples)]
    generator = Generator(em.graphdef, em.params, em.window, tokenizer=tok, batch_size=batch_size)
    texts: list[str] = []
    with tqdm(total=len(inputs), desc=f"generating {name}", unit="response", file=sys.stderr) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            # each chunk its own seed: the same prompt's samples in different chunks must differ
            cfg = dataclasses.replace(sampling, seed=sampling.seed * 1_000_003 + start)
            texts += [g.text for g in generator.generate(chunk, cfg)]
            bar.update(len(chunk))
    return [texts[i:i + samples] for i in range(0, len(texts), samples)]
