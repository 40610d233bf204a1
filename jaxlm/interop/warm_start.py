"""The parameters a fresh training run starts from: `init.from` (a jaxlm workdir's newest
checkpoint that restores) or `init.hf` (a transformers folder).

The source must have the run's architecture, except that the run may add token rows (chat tokens
appended to the tokenizer: new rows start at the mean of the trained rows, old rows unchanged) and
LoRA adapters (which the run creates fresh). The trainer puts these parameters into its fresh state;
a run that has checkpoints of its own resumes from them instead.
"""

from __future__ import annotations

from typing import Optional

import jax

from jaxlm.config import Config
from jaxlm.interop.hf import fit_params, load_hf
from jaxlm.train.checkpoint_reader import read_params


def initial_params(config: Config) -> Optional[dict]:
    """The source's parameters fitted to `config.model` (host arrays), or None without `init`."""
    init = config.init
    if init.from_:
        src_config, params = read_params(init.from_)
        src_model, where = src_config.model, f"init.from={init.from_}"
        params = jax.device_get(params)
    elif init.hf:
        src_model, params = load_hf(init.hf)
        where = f"init.hf={init.hf}"
    else:
        return None
    return jax.device_get(fit_params(config.model, src_model, params, where, grow_vocab=True))
