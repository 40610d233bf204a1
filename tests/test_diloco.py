"""DiLoCo: H=1 with SGD equals data-parallel SGD; H>1 with AdamW trains and communicates H x less."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.config import ConfigError
from jaxlm.model import layers
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train.diloco import DiLoCo
from jaxlm.train.state import build_optimizer, init_state, model_spec, state_shardings
from jaxlm.train.step import BATCH_KEYS, make_train_step
from mesh_runs import branch_computations, collective_bytes, computations, max_rel, tree_rel
from train_utils import synthetic_batches, tiny_config

RTOL = 1e-5
MESH = {"data": 2, "fsdp": 2, "tensor": 2}  # 2 replicas, each split over fsdp and tensor


def _config(mesh=MESH, model=None, **diloco):
    config = tiny_config("llama", mesh=mesh, model=model, train={"global_batch": 8}, optim={"clip_norm": 0.0})
    for key, value in diloco.items():
        setattr(config.diloco, key, value)
    return config


def _put(batch, sharding):
    return {k: jax.device_put(jnp.asarray(batch[k], jnp.int32), sharding) for k in BATCH_KEYS}


def _data_parallel(config, batches, optimizer=None, devices=None):
    """Ordinary data parallelism on the same mesh: (losses, params, compiled step text)."""
    mesh = build_mesh(config.mesh, devices)
    spec = model_spec(config)
    optimizer = optimizer or build_optimizer(config, spec)
    shardings = state_shardings(spec, optimizer, mesh)
    state = init_state(config, spec, optimizer, shardings)
    batch_sharding = rules.batch_sharding(mesh, 2, leading=1)
    layers.set_activation_constraint(rules.activation_constraint(mesh))
    try:
        step = jax.jit(make_train_step(config, spec, optimizer, mesh),
                       in_shardings=(shardings, {k: batch_sharding for k in BATCH_KEYS}),
                       out_shardings=(shardings, None), donate_argnums=0)
        hlo = step.lower(state, _put(batches[0], batch_sharding)).compile().as_text()
        losses = []
        for batch in batches:
            state, metrics = step(state, _put(batch, batch_sharding))
            losses.append(float(metrics["loss"]))
    finally:
        layers.set_activation_constraint(None)
    return np.array(losses), jax.device_get(state["params"]), hlo


def _diloco(config, batches, inner_optimizer=None, devices=None):
    """(losses, global params, whether each step synchronised, compiled step text)."""
    mesh = build_mesh(config.mesh, devices)
    spec = model_spec(config)
    algo = DiLoCo(config, spec, mesh, inner_optimizer)
    batch_sharding = rules.batch_sharding(mesh, 2, leading=1)
    step = algo.jit(algo.step, batch_sharding)
    state = algo.init()
    hlo = step.lower(state, _put(batches[0], batch_sharding)).compile().as_text()
    losses, synced = [], []
    for batch in batches:
        state, metrics = step(state, _put(batch, batch_sharding))
        losses.append(float(metrics["loss"]))
        synced.append(float(metrics["diloco_sync"]))
    return np.array(losses), jax.device_get(state["params"]), np.array(synced), hlo


def test_one_inner_sgd_step_with_outer_sgd_rate_one_is_data_parallel_sgd():
    config = _config(inner_steps=1, outer_lr=1.0, outer_momentum=0.0)
    batches = list(synthetic_batches(10, 1, 8, 16, 96, seed=4))
    sgd = optax.sgd(0.5)
    loss_dp, params_dp, _ = _data_parallel(config, batches, sgd)
    loss_dl, params_dl, synced, _ = _diloco(config, batches, sgd)
    assert loss_dp[-1] < loss_dp[0] - 0.3
    assert synced.tolist() == [1.0] * 10
    assert max_rel(loss_dp, loss_dl) <= RTOL
    assert tree_rel(params_dp, params_dl) <= RTOL  # SGD: every parameter, not only the losses


def test_several_adamw_steps_apart_train_and_communicate_h_times_less():
    """4 replicas on a pure data mesh (every collective crosses replicas), H = 4, AdamW inside.
    Layers unrolled, so that no collective sits in a loop body (the HLO text shows a body once)."""
    h, steps, devices = 4, 12, jax.devices()[:4]
    config = _config({"data": 4}, {"scan_layers": False}, inner_steps=h, outer_lr=0.7, outer_momentum=0.9)
    batches = list(synthetic_batches(steps, 1, 8, 16, 96, seed=6))
    loss_dp, params, dp_hlo = _data_parallel(config, batches, devices=devices)
    loss_dl, _, synced, hlo = _diloco(config, batches, devices=devices)
    assert synced.tolist() == [0.0, 0.0, 0.0, 1.0] * 3
    # It trains, at equal tokens not far behind data parallelism on this easy task.
    assert loss_dl[-1] < loss_dl[0] - 1.0
    assert loss_dl[-1] < loss_dp[-1] + 0.5 * (loss_dp[0] - loss_dp[-1])

    # Data parallelism all-reduces the gradients every step. DiLoCo's step all-reduces a few
    # logged scalars, and the parameters only inside the branch taken every H-th step.
    param_bytes = 4 * sum(x.size for x in jax.tree.leaves(params))
    dp = collective_bytes(dp_hlo)
    sync = collective_bytes(hlo, branch_computations(hlo))
    every_step = collective_bytes(hlo, set(computations(hlo)) - branch_computations(hlo))
    assert dp["all-reduce"] >= param_bytes  # (XLA reduces the tied embedding's two uses apart: a bit more)
    assert sync["all-reduce"] == param_bytes
    assert every_step["all-reduce"] < 1e-3 * param_bytes
    assert sum(dp.values()) == dp["all-reduce"] and sum(sync.values()) + sum(every_step.values()) == \
        sync["all-reduce"] + every_step["all-reduce"]  # nothing else moves
    per_h_dp = h * dp["all-reduce"]
    per_h_diloco = h * every_step["all-reduce"] + sync["all-reduce"]
    print(f"all-reduce bytes per {h} steps: data parallel {per_h_dp}, DiLoCo {per_h_diloco} "
          f"({per_h_dp / per_h_diloco:.2f}x less)")
    assert per_h_dp / per_h_diloco >= 0.99 * h


@pytest.mark.parametrize("mesh, train, message", [
    ({"data": 2, "pipe": 4}, {"global_batch": 8}, "mesh.pipe=1"),
    ({"data": 4, "fsdp": 2}, {"global_batch": 4}, r"train.micro_batch \(4\) must split into 4 replicas"),
])
def test_meshes_diloco_cannot_use_fail_with_the_reason(mesh, train, message):
    config = tiny_config("llama", mesh=mesh, model={"n_layers": 4}, train=train)
    with pytest.raises(ConfigError, match=message):
        DiLoCo(config, model_spec(config), build_mesh(config.mesh))
