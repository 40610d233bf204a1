"""DiLoCo: local SGD over replicas that communicate once every H steps.

Replicas lie along the mesh's `data` axis. Each holds its own parameters and inner optimizer state
(the train state of `make_train_step`, every leaf with a leading replica dim split over `data`;
`fsdp` and `tensor` split each replica as usual) and trains on its share of the batch with no
communication between replicas: the ordinary train step, vmapped over the replica dim. Every
H = diloco.inner_steps steps the replicas' parameters are averaged (one parameter-sized all-reduce
over `data`), and an outer optimizer — SGD with Nesterov momentum — treats `global - average` as
a gradient for the global parameters, from which every replica then continues. Data parallelism
all-reduces the gradients every step: H times the traffic. (Douillard et al. 2023, "DiLoCo".)
The last step of training (train.steps) synchronises too, so the final global parameters hold
every step's work.

With H = 1, plain SGD inside and an outer SGD step of rate 1 without momentum, this is exactly
data-parallel SGD (each replica's gradient is its token mean, so equal token counts per replica
are needed for equality).

State: {"params": global parameters, "outer_opt_state", "replicas": train state with a replica
dim, "step": int32}. `step(state, batch)` is one inner step, followed on every H-th step by the
outer one inside the same compiled function.

The loop (loop.py) runs this class through the same methods as the ordinary scheme (schemes.py): `init`,
`abstract`, `jit(step)`, `spike_counters`, `rolled_back`, `checkpoint_extra`, `check_resumable`.
What it evaluates, checkpoints' `params`, and what jaxlm.eval/sample/export read, are the global
parameters (between synchronisations: those of the last one).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.config import Config, ConfigError
from jaxlm.parallel import rules
from jaxlm.train import checkpoint
from jaxlm.train.state import ModelSpec, build_optimizer, init_state, state_shardings
from jaxlm.train.objective import Objective
from jaxlm.train.step import BATCH_KEYS, make_train_step

AXIS = "data"  # the replica axis
# How per-replica metrics (replicas,) become one logged value; any other metric: the mean.
_TOKEN_WEIGHTED = ("loss", "objective")
_SUMMED = ("tokens", "skips")  # tokens of the whole batch; replica updates dropped so far
_MAX = ("skipped", "loss_z", "grad_z", "spike_score", "rollbacks")  # a step is flagged if any replica's is


def outer_optimizer(config: Config) -> optax.GradientTransformation:
    d = config.diloco
    return optax.sgd(d.outer_lr, momentum=d.outer_momentum or None, nesterov=d.nesterov and d.outer_momentum > 0)


def check(config: Config, mesh: Mesh) -> int:
    """The replica count; ConfigError when this mesh and batch cannot run DiLoCo."""
    replicas = mesh.shape.get(AXIS, 1)
    if mesh.shape.get("pipe", 1) > 1:
        raise ConfigError("diloco runs replicas along mesh.data with mesh.pipe=1; combine it with data, fsdp "
                          "and tensor axes")
    micro = config.train.micro_batch
    inner_shards = replicas * mesh.shape.get("fsdp", 1)
    if micro % inner_shards:
        raise ConfigError(f"train.micro_batch ({micro}) must split into {replicas} replicas (mesh.data) x "
                          f"mesh.fsdp={mesh.shape.get('fsdp', 1)}; change the batch or the mesh")
    return replicas


class DiLoCo:
    """The state, its shardings and the compiled steps for one model, config and mesh."""

    fresh_opt_state = None  # a resume never swaps the optimizer state (check_resumable refuses a change)

    def __init__(self, config: Config, spec: ModelSpec, mesh: Mesh,
                 inner_optimizer: Optional[optax.GradientTransformation] = None, objective: Optional[Objective] = None):
        self.config, self.spec, self.mesh = config, spec, mesh
        self.replicas = check(config, mesh)
        self.inner_steps = config.diloco.inner_steps
        self.inner = inner_optimizer or build_optimizer(config, spec)
        self.outer = outer_optimizer(config)
        # the replicas' own step: the ordinary one (which refuses configs that ask for DiLoCo)
        inner_config = dataclasses.replace(config, diloco=dataclasses.replace(config.diloco, enabled=False))
        self._train_step = make_train_step(inner_config, spec, self.inner, mesh, objective)
        single = state_shardings(spec, self.inner, mesh)
        self._single = single
        replicated = NamedSharding(mesh, PartitionSpec())
        self.shardings = {
            "params": single["params"],
            "outer_opt_state": state_shardings(spec, self.outer, mesh)["opt_state"],
            "replicas": jax.tree.map(self._stacked, single),
            "step": replicated,
        }
        self._counters = jax.jit(lambda r: {  # gathered, so every process can read them
            "skips": r["spike"]["skips"], "lr_scale": r["lr_scale"][0], "rollbacks": r["spike"]["rollbacks"][0]},
            out_shardings=replicated)
        self._layout: Optional[dict] = None

    def _stacked(self, sharding: NamedSharding) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXIS, *sharding.spec))

    def init(self) -> dict:
        one = init_state(self.config, self.spec, self.inner, self._single)
        copies = jax.jit(lambda s: jax.tree.map(lambda a: jnp.broadcast_to(a, (self.replicas,) + a.shape), s),
                         out_shardings=self.shardings["replicas"])(one)
        outer = jax.jit(self.outer.init, out_shardings=self.shardings["outer_opt_state"])(one["params"])
        return {"params": one["params"], "outer_opt_state": outer, "replicas": copies,
                "step": jax.device_put(jnp.zeros([], jnp.int32), self.shardings["step"])}

    def abstract(self) -> dict:
        """The state as ShapeDtypeStructs with their shardings: the checkpoint restore target."""
        shapes = jax.eval_shape(self.init)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, self.shardings)

    # ------------------------------------------------------------------------------------------

    def inner_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        """One optimizer step on every replica, each on its rows of the batch; no communication
        between replicas (metrics aside)."""
        def split(a):  # (n_micro, rows, length) -> (replicas, n_micro, rows / replicas, length)
            n, rows = a.shape[:2]
            return a.reshape((n, self.replicas, rows // self.replicas) + a.shape[2:]).swapaxes(0, 1)

        # while tracing the vmapped step, activations name no `data` (the replica dim holds it)
        with rules.activation_sharding(self.mesh, reserved=(AXIS,)):
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
        """The train step's contract: an inner step, then the outer one when step % H == 0 or the
        step is the last of training."""
        state, metrics = self.inner_step(state, batch)
        sync = (state["step"] % self.inner_steps == 0) | (state["step"] >= self.config.train.steps)
        state = jax.lax.cond(sync, self.outer_step, lambda s: s, state)
        return state, {**metrics, "diloco_sync": sync.astype(jnp.float32)}

    def jit(self, fn: Callable, batch_sharding) -> Callable:
        """`step` or `inner_step` compiled with the state's shardings, state donated."""
        return jax.jit(rules.sharded_activations(fn, self.mesh), in_shardings=(self.shardings, {k: batch_sharding for k in BATCH_KEYS}),
                       out_shardings=(self.shardings, None), donate_argnums=0)

    # ------------------------------------------------------------------------------------------
    # What the Trainer needs around the step: loss-spike rollbacks and checkpoints.

    def spike_counters(self, state: dict) -> dict:
        """Host copies of the loss-spike counters: every replica's `skips` (replicas,); `lr_scale`
        and `rollbacks`, which all replicas share."""
        return jax.device_get(self._counters(state["replicas"]))

    def rolled_back(self, restored: dict, plan, skips) -> dict:
        """`restored` (a checkpoint's state) with this run's skip counts (replicas,) and the rollback's
        lowered learning rate on every replica: spikes.rolled_back_state for a replicated state."""
        r = restored["replicas"]

        def put(value, like):
            return jax.device_put(jnp.broadcast_to(jnp.asarray(value, like.dtype), like.shape), like.sharding)

        spike = dict(r["spike"], skips=put(skips, r["spike"]["skips"]),
                     rollbacks=put(plan.number, r["spike"]["rollbacks"]),
                     lr_until=put(plan.lr_until, r["spike"]["lr_until"]))
        return {**restored, "replicas": {**r, "spike": spike, "lr_scale": put(plan.lr_scale, r["lr_scale"])}}

    def layout(self) -> dict[str, list[int]]:
        """{array path: shape} of the state; saved with every checkpoint to check a resume against."""
        if self._layout is None:
            self._layout = {k: list(x.shape) for k, x in checkpoint.leaves_by_path(self.abstract()).items()}
        return self._layout

    def checkpoint_extra(self) -> dict:
        return {"diloco": {"replicas": self.replicas, "inner_steps": self.inner_steps, "layout": self.layout()}}

    def check_resumable(self, manager) -> None:
        check_resumable(manager, self.config, self)


def _combine(metrics: dict) -> dict:
    """Per-replica metrics (replicas,) -> one value each (see _TOKEN_WEIGHTED, _SUMMED, _MAX)."""
    tokens = metrics["tokens"]
    out = {}
    for name, value in metrics.items():
        if name in _SUMMED:
            out[name] = jnp.sum(value)
        elif name in _TOKEN_WEIGHTED:
            out[name] = jnp.sum(value * tokens) / jnp.maximum(jnp.sum(tokens), 1.0)
        elif name in _MAX:
            out[name] = jnp.max(value)
        else:
            out[name] = jnp.mean(value.astype(jnp.float32))
    return out


# ----------------------------------------------------------------------------------------------
# Resuming: a checkpoint restores only into the state layout it was saved with. Restoring another
# one fails like a corrupt checkpoint would, and the checkpoint manager would set good checkpoints
# aside; so the trainer checks the newest one first and stops with what to do instead.


def check_resumable(manager, config: Config, diloco: Optional[DiLoCo]) -> None:
    """ConfigError when the checkpoint this run would resume from was saved with another layout:
    by a DiLoCo run when `diloco` is None, or else without DiLoCo, with another replica count, or
    with another optimizer state (optim.name, diloco.outer_momentum = 0 or not)."""
    found = _newest_meta(manager, config)
    if found is None:
        return
    where, meta = found
    saved = (meta.get("extra") or {}).get("diloco")
    if diloco is None:
        if saved:
            raise ConfigError(
                f"the checkpoint {where} was saved by a DiLoCo run ({saved['replicas']} replicas); resume it with "
                f"diloco.enabled=true and mesh.data={saved['replicas']}. Its global parameters are readable by "
                "jaxlm.eval, jaxlm.sample and jaxlm.export")
        return
    if not saved:
        raise ConfigError(
            f"diloco.enabled=true, but the checkpoint {where} was saved by a run without DiLoCo, whose state has "
            "no replicas or outer optimizer; resume it with diloco.enabled=false, or start DiLoCo in a new workdir")
    if saved["replicas"] != diloco.replicas:
        raise ConfigError(
            f"the checkpoint {where} holds {saved['replicas']} DiLoCo replicas, and this mesh has "
            f"mesh.data={diloco.replicas}; resume with mesh.data={saved['replicas']}")
    now = diloco.layout()
    differ = sorted(k for k in set(saved["layout"]) | set(now) if saved["layout"].get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"{k} (saved {saved['layout'].get(k)}, now {now.get(k)})" for k in differ[:3])
        raise ConfigError(
            f"the checkpoint {where} holds another DiLoCo state than this config makes ({len(differ)} arrays "
            f"differ: {shown}); resume with the optim and diloco settings it was saved with "
            "(its config is in the checkpoint), or start a new workdir")


def _newest_meta(manager, config: Config) -> Optional[tuple[str, dict]]:
    """(where, meta) of the newest checkpoint whose meta reads, in the workdir or else in
    checkpoint.restore_from; None when there is none (a fresh start)."""
    def newest(m, steps) -> Optional[tuple[str, dict]]:
        for step in reversed(steps):
            try:
                return f"{m.directory}/{step}", m.read_meta(step)
            except Exception:  # noqa: BLE001 - an unreadable one: the restore itself sets it aside and says why
                continue
        return None

    found = newest(manager, manager.all_steps())
    if found is not None or not config.checkpoint.restore_from:
        return found
    directory, step = checkpoint.resolve_source(config.checkpoint.restore_from)
    source = checkpoint.CheckpointManager(directory, config, directory=directory, read_only=True)
    try:
        return newest(source, [step] if step is not None else source.all_steps())
    finally:
        source.close()
