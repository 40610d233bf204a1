"""DiLoCo: local SGD over replicas that communicate once every H steps.

Replicas lie along the mesh's `data` axis. Each holds its own parameters and inner optimizer state
(the train state of `make_train_step`, every leaf with a leading replica dim split over `data`;
`fsdp` and `tensor` split each replica as usual) and trains on its share of the batch with no
communication between replicas: the ordinary train step, vmapped over the replica dim. Every
H = diloco.inner_steps steps the replicas' parameters are averaged (one parameter-sized all-reduce
over `data`), and an outer optimizer — SGD with Nesterov momentum — treats `global - average` as
a gradient for the global parameters, from which every replica then continues. Data parallelism
all-reduces the gradients every step: H times the traffic. (Douillard et al. 2023, "DiLoCo".)

With H = 1, plain SGD inside and an outer SGD step of rate 1 without momentum, this is exactly
data-parallel SGD (each replica's gradient is its token mean, so equal token counts per replica
are needed for equality).

State: {"params": global parameters, "outer_opt_state", "replicas": train state with a replica
dim, "step": int32}. `step(state, batch)` is one inner step, followed on every H-th step by the
outer one inside the same compiled function.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.config import Config, ConfigError
from jaxlm.model import layers
from jaxlm.parallel import rules
from jaxlm.train.state import ModelSpec, build_optimizer, init_state, state_shardings
from jaxlm.train.step import make_train_step

AXIS = "data"  # the replica axis
_TOKEN_WEIGHTED = ("loss", "objective")


def outer_optimizer(config: Config) -> optax.GradientTransformation:
    d = config.diloco
    return optax.sgd(d.outer_lr, momentum=d.outer_momentum or None, nesterov=d.nesterov and d.outer_momentum > 0)


def check(config: Config, mesh: Mesh) -> int:
    """The replica count; ConfigError when this mesh and batch cannot run DiLoCo."""
    replicas = mesh.shape.get(AXIS, 1)
    if mesh.shape.get("pipe", 1) > 1:
        raise ConfigError("diloco runs replicas along mesh.data with mesh.pipe=1; combine it with data, fsdp "
                          "and tensor axes")
    micro = config.train.micro_batch or config.train.global_batch
    inner_shards = replicas * mesh.shape.get("fsdp", 1)
    if micro % inner_shards:
        raise ConfigError(f"train.micro_batch ({micro}) must split into {replicas} replicas (mesh.data) x "
                          f"mesh.fsdp={mesh.shape.get('fsdp', 1)}; change the batch or the mesh")
    return replicas


@contextlib.contextmanager
def _replica_activations(mesh: Mesh):
    """While tracing the vmapped step: activations name no `data` (the replica dim holds it)."""
    saved = layers._constraint  # jaxlm.model.layers has no getter for what is installed
    layers.set_activation_constraint(rules.activation_constraint(mesh, reserved=(AXIS,)))
    try:
        yield
    finally:
        layers.set_activation_constraint(saved)


class DiLoCo:
    """The state, its shardings and the compiled steps for one model, config and mesh."""

    def __init__(self, config: Config, spec: ModelSpec, mesh: Mesh,
                 inner_optimizer: Optional[optax.GradientTransformation] = None):
        self.config, self.spec, self.mesh = config, spec, mesh
        self.replicas = check(config, mesh)
        self.inner_steps = config.diloco.inner_steps
        self.inner = inner_optimizer or build_optimizer(config, spec)
        self.outer = outer_optimizer(config)
        # the replicas' own step: the ordinary one (which refuses configs that ask for DiLoCo)
        inner_config = dataclasses.replace(config, diloco=dataclasses.replace(config.diloco, enabled=False))
        self._train_step = make_train_step(inner_config, spec, self.inner, mesh)
        single = state_shardings(spec, self.inner, mesh)
        self._single = single
        self.shardings = {
            "params": single["params"],
            "outer_opt_state": state_shardings(spec, self.outer, mesh)["opt_state"],
            "replicas": jax.tree.map(self._stacked, single),
            "step": NamedSharding(mesh, PartitionSpec()),
        }

    def _stacked(self, sharding: NamedSharding) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXIS, *sharding.spec))

    def init(self) -> dict:
        one = init_state(self.config, self.spec, self.inner, self._single)
        copies = jax.jit(lambda s: jax.tree.map(lambda a: jnp.broadcast_to(a, (self.replicas,) + a.shape), s),
                         out_shardings=self.shardings["replicas"])(one)
        outer = jax.jit(self.outer.init, out_shardings=self.shardings["outer_opt_state"])(one["params"])
        return {"params": one["params"], "outer_opt_state": outer, "replicas": copies,
                "step": jax.device_put(jnp.zeros([], jnp.int32), self.shardings["step"])}

    # ------------------------------------------------------------------------------------------

    def inner_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        """One optimizer step on every replica, each on its rows of the batch; no communication
        between replicas (metrics aside)."""
        def split(a):  # (n_micro, rows, length) -> (replicas, n_micro, rows / replicas, length)
            n, rows = a.shape[:2]
            return a.reshape((n, self.replicas, rows // self.replicas) + a.shape[2:]).swapaxes(0, 1)

        with _replica_activations(self.mesh):
            replicas, metrics = jax.vmap(self._train_step, spmd_axis_name=AXIS)(
                state["replicas"], jax.tree.map(split, batch))
        return {**state, "replicas": replicas, "step": state["step"] + 1}, _combine(metrics)

    def outer_step(self, state: dict) -> dict:
        """Average the replicas (the one all-reduce), take an outer step, restart replicas from it."""
        params = state["params"]
        average = jax.tree.map(lambda a: jnp.mean(a.astype(jnp.float32), axis=0), state["replicas"]["params"])
        outer_grad = jax.tree.map(lambda g, a: (g.astype(jnp.float32) - a).astype(g.dtype), params, average)
        updates, outer_opt_state = self.outer.update(outer_grad, state["outer_opt_state"], params)
        params = optax.apply_updates(params, updates)
        stacked = jax.tree.map(lambda p, s: jax.lax.with_sharding_constraint(
            jnp.broadcast_to(p, (self.replicas,) + p.shape), s), params, self.shardings["replicas"]["params"])
        return {**state, "params": params, "outer_opt_state": outer_opt_state,
                "replicas": {**state["replicas"], "params": stacked}}

    def step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        """The train step's contract: an inner step, then the outer one when step % H == 0."""
        state, metrics = self.inner_step(state, batch)
        sync = state["step"] % self.inner_steps == 0
        state = jax.lax.cond(sync, self.outer_step, lambda s: s, state)
        return state, {**metrics, "diloco_sync": sync.astype(jnp.float32)}

    def jit(self, fn: Callable, batch_sharding) -> Callable:
        """`step` or `inner_step` compiled with the state's shardings, state donated."""
        from jaxlm.train.step import BATCH_KEYS
        return jax.jit(fn, in_shardings=(self.shardings, {k: batch_sharding for k in BATCH_KEYS}),
                       out_shardings=(self.shardings, None), donate_argnums=0)


def _combine(metrics: dict) -> dict:
    """Per-replica metrics (replicas,) -> one value: token-weighted loss, summed tokens, else the mean."""
    tokens = metrics["tokens"]
    out = {}
    for name, value in metrics.items():
        if name == "tokens":
            out[name] = jnp.sum(value)
        elif name in _TOKEN_WEIGHTED:
            out[name] = jnp.sum(value * tokens) / jnp.maximum(jnp.sum(tokens), 1.0)
        else:
            out[name] = jnp.mean(value.astype(jnp.float32))
    return out
