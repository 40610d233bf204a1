"""The train and eval steps: pure functions of (state, batch), compiled by setup.py.

A batch holds `n_micro` micro-batches stacked on a leading dim: (n_micro, rows, length). The
objective (objective.py) gives each micro-batch's sums; gradients and sums are added over
micro-batches inside the step (a scan) and divided by the whole batch's weight (next-token: its
loss tokens) at the end, so accumulation equals the large batch. Metrics leave as arrays; logging happens
outside. Randomness (dropout) comes from fold_in(seed, step), so a resumed run draws the same.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxlm.config import Config, ConfigError
from jaxlm.parallel import pipeline
from jaxlm.train import faults as faults_lib, spikes
from jaxlm.train import objective as objective_lib
from jaxlm.train.objective import TOKEN_FIELDS, Objective, Sums
from jaxlm.train.optimizer import make_schedule, penalty
from jaxlm.train.state import ModelSpec

BATCH_KEYS = TOKEN_FIELDS


def _uses_dropout(config: Config) -> bool:
    m = config.model
    return max(m.embed_dropout, m.attn_dropout, m.resid_dropout) > 0 or (m.lora.rank > 0 and m.lora.dropout > 0)


def make_loss_fn(config: Config, spec: ModelSpec, objective: Objective, *, train: bool) -> Callable:
    """loss_fn(params, micro_batch, key) -> (objective_sum, Sums): the model's body, then the objective."""
    def loss_fn(params, micro, key):
        model = nnx.merge(spec.graphdef, params)
        dropout_key = key if (train and _uses_dropout(config)) else None
        h_BTD = model.hidden(micro["inputs"], micro["positions"], micro["segment_ids"], dropout_key)
        sums = objective.loss(model, h_BTD, micro, train=train)
        return sums.objective, sums

    return loss_fn


def _head(objective: Objective, *, train: bool) -> Callable:
    """The objective as the pipeline's per-micro-batch head: (model, h_BTD, micro) -> (objective, Sums)."""
    def head(model, h_BTD, micro):
        sums = objective.loss(model, h_BTD, micro, train=train)
        return sums.objective, sums
    return head


def _zero_sums(config: Config, spec: ModelSpec, objective: Objective, params, micro) -> Sums:
    """Zeros shaped like the objective's Sums (the accumulator's start), from its head alone."""
    def head(p, m):
        model = nnx.merge(spec.graphdef, p)
        h_BTD = jax.ShapeDtypeStruct(m["inputs"].shape + (config.model.d_model,), jnp.dtype(config.model.dtype))
        return objective.loss(model, jnp.zeros(h_BTD.shape, h_BTD.dtype), m, train=True)
    return jax.tree.map(jnp.zeros_like, jax.eval_shape(head, params, micro))


def make_train_step(config: Config, spec: ModelSpec, optimizer: optax.GradientTransformation,
                    mesh: Mesh, objective: Optional[Objective] = None) -> Callable:
    """The step on `mesh` for `objective` (default: the one train.objective names); with pipe > 1
    the micro-batches go through the pipeline (jaxlm.parallel.pipeline) instead of one by one."""
    if config.diloco.enabled:  # its own state and step; this one would silently ignore it
        raise ConfigError("diloco.enabled: DiLoCo has its own state and step (jaxlm.train.diloco.DiLoCo), "
                          "which the Trainer builds when diloco.enabled; make_train_step is only its "
                          "replicas' inner step, built with diloco.enabled=false")
    objective = objective or objective_lib.build(config)
    loss_fn = make_loss_fn(config, spec, objective, train=True)
    pipelined = pipeline.make_pipelined_grads(config, spec, mesh, _head(objective, train=True))  # None without a pipe axis
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    schedule = make_schedule(config.optim, config.train.steps)
    l1, l2 = config.optim.l1, config.optim.l2
    base_key = jax.random.key(config.seed + 1)
    spike_guard = spikes.make_guard(config.spikes)
    injector = faults_lib.make_injector(config)  # None unless config.faults (drills and tests)

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        if injector:
            batch = injector.corrupt_batch(batch, state)
        params = state["params"]
        step_key = jax.random.fold_in(base_key, state["step"])
        n_micro = batch["inputs"].shape[0]
        tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))

        def micro_step(carry, xs):
            grads, sums = carry
            micro, i = xs
            (_, micro_sums), g = grad_fn(params, micro, jax.random.fold_in(step_key, i))
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            return (grads, jax.tree.map(jnp.add, sums, micro_sums)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        if pipelined is not None:
            grads, sums = pipelined(params, batch, step_key)
        else:
            first = jax.tree.map(lambda x: x[0], batch)
            no_sums = _zero_sums(config, spec, objective, params, first)
            if n_micro == 1:
                (grads, sums), _ = micro_step((zeros, no_sums), (first, 0))
            else:
                (grads, sums), _ = jax.lax.scan(micro_step, (zeros, no_sums), (batch, jnp.arange(n_micro)))
        denom = jnp.maximum(sums.weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        if l1 or l2:
            pen, pen_grads = jax.value_and_grad(penalty)(params, spec.axes, l1, l2)
            grads = jax.tree.map(jnp.add, grads, pen_grads)
        else:
            pen = 0.0
        if injector:
            grads = injector.corrupt_grads(grads, state)
        grad_norm = optax.global_norm(grads)  # before clipping: what spike detection watches
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        updates = jax.tree.map(lambda u: u * state["lr_scale"], updates)
        if injector:
            updates = injector.scale_updates(updates, state)
        new_state = {
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "lr_scale": state["lr_scale"],
        }
        metrics = {name: value / denom for name, value in sums.metrics.items()}
        metrics.update({
            "objective": metrics["loss"] + pen,
            "grad_norm": grad_norm,
            "lr": schedule(state["step"]) * state["lr_scale"],
            "tokens": tokens,
        })
        # A flagged step (loss or grad norm far above their running statistics, or not finite)
        # keeps the old params and opt_state; decided here, with no host round trip.
        new_state, spike_metrics = spike_guard(state, new_state, metrics["loss"], grad_norm)
        metrics.update(spike_metrics)
        return new_state, metrics

    return train_step


def make_eval_step(config: Config, spec: ModelSpec, mesh: Mesh, objective: Optional[Objective] = None) -> Callable:
    """eval_step(params, micro_batch) -> Sums of the objective (no regulariser) over the micro-batch."""
    objective = objective or objective_lib.build(config)
    pipelined = pipeline.make_pipelined_eval(config, spec, mesh, _head(objective, train=False))  # None without a pipe axis
    if pipelined is not None:
        return pipelined
    loss_fn = make_loss_fn(config, spec, objective, train=False)

    def eval_step(params, micro):
        return loss_fn(params, micro, None)[1]

    return eval_step
