"""The compiled train and eval steps: pure functions of (state, batch).

A batch holds `n_micro` micro-batches stacked on a leading dim: (n_micro, rows, length). Gradients
are summed over micro-batches inside the step (a scan) and divided by the token count of the whole
batch at the end, so accumulation equals the large batch. Metrics leave as arrays; logging happens
outside. Randomness (dropout) comes from fold_in(seed, step), so a resumed run draws the same.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.config import Config, ConfigError
from jaxlm.parallel import pipeline
from jaxlm.train import faults as faults_lib, spikes
from jaxlm.train.loss import cross_entropy_sums
from jaxlm.train.optimizer import make_schedule, penalty
from jaxlm.train.state import ModelSpec

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def _uses_dropout(config: Config) -> bool:
    m = config.model
    return max(m.embed_dropout, m.attn_dropout, m.resid_dropout) > 0


def make_loss_fn(config: Config, spec: ModelSpec, *, train: bool) -> Callable:
    """loss_fn(params, micro_batch, key) -> (objective_sum, (nll_sum, token_count))."""
    chunk = config.model.loss_chunk
    z_weight = config.train.z_loss

    def loss_fn(params, micro, key):
        model = nnx.merge(spec.graphdef, params)
        dropout_key = key if (train and _uses_dropout(config)) else None
        h_BTD = model.hidden(micro["inputs"], micro["positions"], micro["segment_ids"], dropout_key)
        d = h_BTD.shape[-1]
        objective, nll_sum = cross_entropy_sums(
            h_BTD.reshape(-1, d), model.unembedding(), micro["targets"].reshape(-1),
            micro["loss_mask"].reshape(-1), z_weight=z_weight if train else 0.0, chunk=chunk)
        return objective, (nll_sum, jnp.sum(micro["loss_mask"].astype(jnp.float32)))

    return loss_fn


def make_train_step(config: Config, spec: ModelSpec, optimizer: optax.GradientTransformation,
                    mesh=None) -> Callable:
    """mesh: the step's mesh (default: the one built from config.mesh); with pipe > 1 the
    micro-batches go through the pipeline (jaxlm.parallel.pipeline) instead of one by one."""
    if config.diloco.enabled:  # its own state and step; this one would silently ignore it
        raise ConfigError("diloco.enabled: DiLoCo has its own state and step (jaxlm.train.diloco.DiLoCo), "
                          "which the Trainer builds when diloco.enabled; make_train_step is only its "
                          "replicas' inner step, built with diloco.enabled=false")
    loss_fn = make_loss_fn(config, spec, train=True)
    pipelined = pipeline.make_pipelined_grads(config, spec, mesh)  # None without a pipe axis
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
            grads, nll = carry
            micro, i = xs
            (_, (micro_nll, _)), g = grad_fn(params, micro, jax.random.fold_in(step_key, i))
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            return (grads, nll + micro_nll), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        if pipelined is not None:
            grads, nll = pipelined(params, batch, step_key)
        elif n_micro == 1:
            (grads, nll), _ = micro_step((zeros, 0.0), (jax.tree.map(lambda x: x[0], batch), 0))
        else:
            (grads, nll), _ = jax.lax.scan(micro_step, (zeros, jnp.zeros([], jnp.float32)),
                                           (batch, jnp.arange(n_micro)))
        denom = jnp.maximum(tokens, 1.0)
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
        metrics = {
            "loss": nll / denom,
            "objective": nll / denom + pen,
            "grad_norm": grad_norm,
            "lr": schedule(state["step"]) * state["lr_scale"],
            "tokens": tokens,
        }
        # A flagged step (loss or grad norm far above their running statistics, or not finite)
        # keeps the old params and opt_state; decided here, with no host round trip.
        new_state, spike_metrics = spike_guard(state, new_state, metrics["loss"], grad_norm)
        metrics.update(spike_metrics)
        return new_state, metrics

    return train_step


def make_eval_step(config: Config, spec: ModelSpec, mesh=None) -> Callable:
    """eval_step(params, micro_batch) -> (nll_sum, token_count)."""
    loss_fn = make_loss_fn(config, spec, train=False)
    pipelined = pipeline.make_pipelined_eval(config, spec, mesh)  # None without a pipe axis
    if pipelined is not None:
        return pipelined

    def eval_step(params, micro):
        _, (nll_sum, count) = loss_fn(params, micro, None)
        return nll_sum, count

    return eval_step


def compile_for_analysis(config: Config, n_micro: int = 1):
    """Lowers and compiles the real train step on the current devices without running it; the
    planner compares its memory estimate with the result's `memory_analysis()`."""
    from jaxlm.parallel.mesh import build_mesh
    from jaxlm.parallel import rules
    from jaxlm.model import layers
    from jaxlm.train.state import build_optimizer, model_spec, state_shardings

    mesh = build_mesh(config)  # checks the batch and pipeline fit
    spec = model_spec(config)
    optimizer = build_optimizer(config, spec)
    shardings = state_shardings(spec, optimizer, mesh)
    abstract_state = {
        "params": spec.shapes,
        "opt_state": jax.eval_shape(optimizer.init, spec.shapes),
        "step": jax.ShapeDtypeStruct([], jnp.int32),
        "lr_scale": jax.ShapeDtypeStruct([], jnp.float32),
        "spike": jax.eval_shape(spikes.init_stats),
    }
    rows = config.train.micro_batch
    shape = (n_micro, rows, config.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in BATCH_KEYS}
    batch_sharding = rules.batch_sharding(mesh, ndim=2, leading=1)
    layers.set_activation_constraint(rules.activation_constraint(mesh))
    try:
        step = jax.jit(make_train_step(config, spec, optimizer, mesh),
                       in_shardings=(shardings, {k: batch_sharding for k in BATCH_KEYS}),
                       out_shardings=(shardings, None), donate_argnums=0)
        return step.lower(abstract_state, batch).compile()
    finally:
        layers.set_activation_constraint(None)
