"""Test helper (no tests here): the real compiled train step on a chosen mesh, returning losses,
gradient norms and, through an optimizer wrapper that keeps them, the first step's gradients."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.train.state import build_optimizer, model_spec
from train_utils import train_on_mesh


def recording(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner`, whose state also keeps the gradients of the first step: (inner state, grads, count).

    The first step's gradients are the sharded computation's numerics alone; later ones also carry
    the trajectory, where Adam turns rounding-level gradients (e.g. of a key bias, whose true
    gradient is 0) into full-size steps."""
    def init(params):
        return inner.init(params), jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.int32)

    def update(grads, state, params=None):
        updates, inner_state = inner.update(grads, state[0], params)
        kept = jax.tree.map(lambda old, new: jnp.where(state[2] == 0, new, old), state[1], grads)
        return updates, (inner_state, kept, state[2] + 1)

    return optax.GradientTransformation(init, update)


def run(config, batches, devices=None):
    """Trains on `batches` ((n_micro, rows, length) arrays) under config.mesh over `devices`
    (default all); returns (losses, grad norms, the first step's gradients), all numpy."""
    optimizer = recording(build_optimizer(config, model_spec(config)))
    run = train_on_mesh(config, batches, devices, optimizer)
    return run.losses, run.grad_norms, run.state["opt_state"][1]


def max_rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def tree_rel(a, b) -> float:
    """Largest difference of any entry, relative to the largest entry of the whole tree (entries
    whose true value is 0, like a key bias's gradient, differ at rounding level by design)."""
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert pairs and len(pairs) == len(jax.tree.leaves(b))
    scale = max(float(np.max(np.abs(x))) for x, _ in pairs)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs) / scale


_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def computations(hlo: str) -> dict:
    """Compiled HLO text -> {computation name: its instruction lines}."""
    out, name = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%(\S+) ", line)
        if m and line.rstrip().endswith("{"):
            name = m.group(1)
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return out


def branch_computations(hlo: str) -> set:
    """Names of the computations that conditionals choose between (lax.cond branches)."""
    names = set()
    for found in re.findall(r"branch_computations=\{([^}]*)\}", hlo):
        names.update(n.strip().lstrip("%") for n in found.split(","))
    return names


def collective_bytes(hlo: str, names=None) -> dict:
    """Bytes each kind of collective produces per device, in the computations `names` (default
    all) of compiled HLO text; a loop body counts once."""
    out = dict.fromkeys(COLLECTIVES, 0)
    for name, lines in computations(hlo).items():
        if names is not None and name not in names:
            continue
        for line in lines:
            m = re.search(r"= (.*?) (" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
            if not m:
                continue
            for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
                if dtype in _DTYPE_BYTES:
                    out[m.group(2)] += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
    return out
