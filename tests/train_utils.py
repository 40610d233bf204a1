"""Builds a compiled train step on a chosen mesh for numerics tests, fed synthetic token batches."""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import config_from_dict
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train import setup
from jaxlm.train.step import BATCH_KEYS


def tiny_config(family="llama", mesh=None, model=None, train=None, optim=None, seq_len=16):
    model_cfg = {"family": family, "vocab_size": 96, "d_model": 32, "n_layers": 2, "n_heads": 4,
                 "n_kv_heads": 2 if family == "llama" else None, "max_seq_len": 32}
    model_cfg.update(model or {})
    return config_from_dict({
        "data": {"seq_len": seq_len},
        "model": model_cfg,
        "mesh": mesh or {"data": 1},
        "train": {"steps": 20, "global_batch": 8, **(train or {})},
        "optim": {"lr": 1e-2, "schedule": {"warmup_steps": 2}, **(optim or {})},
    })


def synthetic_batches(steps, n_micro, rows, seq_len, vocab, seed=0):
    """Packed-looking batches: two documents per row, a loss mask that drops the border."""
    rng = np.random.default_rng(seed)
    half = seq_len // 2
    for _ in range(steps):
        start = rng.integers(0, vocab, (n_micro, rows, 1))  # learnable: each token determines the next
        tokens = (start + 7 * np.arange(seq_len + 1)) % vocab
        segments = np.ones((n_micro, rows, seq_len), np.int32)
        segments[..., half:] = 2
        positions = np.concatenate([np.arange(half), np.arange(seq_len - half)])
        positions = np.broadcast_to(positions, (n_micro, rows, seq_len))
        mask = np.ones((n_micro, rows, seq_len), np.int32)
        mask[..., half - 1] = 0
        yield dict(inputs=tokens[..., :-1], targets=tokens[..., 1:], segment_ids=segments,
                   positions=positions, loss_mask=mask)


class MeshRun(NamedTuple):
    losses: np.ndarray
    grad_norms: np.ndarray
    state: dict  # the final train state, as numpy
    hlo: Optional[str]  # the compiled step's text, when asked for


def train_on_mesh(config, batches, devices=None, optimizer=None, hlo=False, objective=None) -> MeshRun:
    """Trains on `batches` ((n_micro, rows, length) arrays) under config.mesh over `devices`
    (default all) with `optimizer` and `objective` (default the config's), set up as a run is."""
    run = setup.build(config, mesh=build_mesh(config.mesh, devices), optimizer=optimizer, objective=objective)
    state = run.init()
    losses, norms, text = [], [], None
    for batch in batches:
        batch = {k: jax.device_put(jnp.asarray(batch[k], jnp.int32), run.batch_sharding) for k in BATCH_KEYS}
        if hlo and text is None:
            text = run.train_step.lower(state, batch).compile().as_text()
        state, metrics = run.train_step(state, batch)
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    return MeshRun(np.array(losses), np.array(norms), jax.device_get(state), text)


def run_steps(config, batches, devices=None):
    """Trains on `batches` under config.mesh; returns (losses, grad_norms, final params as numpy)."""
    run = train_on_mesh(config, batches, devices)
    return run.losses, run.grad_norms, run.state["params"]
