"""Test helper (no tests here): the real compiled train step on a chosen mesh, returning losses,
gradient norms and, through an optimizer wrapper that keeps them, the last step's gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.model import layers
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train.state import build_optimizer, init_state, model_spec, state_shardings
from jaxlm.train.step import BATCH_KEYS, make_train_step


def recording(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner`, whose state also keeps the last gradients it was given: (inner state, grads)."""
    def init(params):
        return inner.init(params), jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        updates, inner_state = inner.update(grads, state[0], params)
        return updates, (inner_state, grads)

    return optax.GradientTransformation(init, update)


def run(config, batches, devices=None):
    """Trains on `batches` ((n_micro, rows, length) arrays) under config.mesh over `devices`
    (default all); returns (losses, grad norms, the last step's gradients), all numpy."""
    mesh = build_mesh(config.mesh, devices)
    spec = model_spec(config)
    optimizer = recording(build_optimizer(config, spec))
    shardings = state_shardings(spec, optimizer, mesh)
    state = init_state(config, spec, optimizer, shardings)
    batch_sharding = rules.batch_sharding(mesh, 2, leading=1)
    layers.set_activation_constraint(rules.activation_constraint(mesh))
    try:
        step = jax.jit(make_train_step(config, spec, optimizer, mesh),
                       in_shardings=(shardings, {k: batch_sharding for k in BATCH_KEYS}),
                       out_shardings=(shardings, None), donate_argnums=0)
        losses, norms = [], []
        for batch in batches:
            batch = {k: jax.device_put(jnp.asarray(batch[k], jnp.int32), batch_sharding) for k in BATCH_KEYS}
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
    finally:
        layers.set_activation_constraint(None)
    return np.array(losses), np.array(norms), jax.device_get(state["opt_state"][1])


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
