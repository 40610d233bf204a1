"""Pipeline parallelism over the `pipe` mesh axis, in one compiled SPMD program.

The layer stack (L, ...) is cut into S = mesh.pipe stages; with the circular schedule each device
holds R = pipeline.repeats stages ("virtual stages") and a micro-batch goes R times round the
devices; GPipe is R = 1. The weights are viewed as (R, S, L/(S*R), ...) with S over `pipe`, and
one iteration of the schedule runs every stage at once (a vmap over S, which `spmd_axis_name` keeps
on `pipe`). Between iterations the stage outputs rotate one stage on (a roll of the pipe-sharded
dim, compiled to a collective permute): stage s+1 gets what stage s made; stage 0 gets the last
stage's output, which it keeps in a per-micro-batch buffer — the input of the micro-batch's next
round (circular) or, after the last round, its final hidden state.

Iteration t gives stage s the item k = t - s, i.e. micro-batch k mod M in round k // M, while
0 <= k < R*M. That takes R*M + S - 1 iterations of L/(S*R) layers each, against M*L/S of useful
work, so the idle fraction (the bubble) is (S - 1) / (R*M + S - 1). A round-trip needs the
micro-batch's previous round to be back at stage 0, so the circular schedule needs M >= S.

Gradient accumulation composes: a step's n micro-batches run as n/M pipeline passes (scanned),
M = pipeline.microbatches (0: all n in one pass). The model never sees a mesh axis: it hands out
its layer as a pure function (`Transformer.layer_fn`), and this module schedules it.

Weights live in checkpoints as (L, ...) whatever the mesh, `layers` split into contiguous runs
over `pipe`. That is each GPipe stage's slice already; the circular view (R, S, ...) needs run
r*S + s on device s, so its weights move once per step (an all-to-all over `pipe`, amortised over
the step's micro-batches).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.config import Config, ConfigError
from jaxlm.parallel import rules

AXIS = "pipe"


def bubble_fraction(stages: int, microbatches: int, repeats: int = 1) -> float:
    """Idle fraction of a pass: (S - 1) / (R*M + S - 1); GPipe is R = 1."""
    return (stages - 1) / (repeats * microbatches + stages - 1)


@dataclasses.dataclass(frozen=True)
class Plan:
    stages: int  # S = mesh.pipe
    repeats: int  # R: rounds through the devices (circular), 1 for GPipe
    microbatches: int  # M per pass
    passes: int  # pipeline passes per step (gradient accumulation over passes)

    @property
    def bubble(self) -> float:
        return bubble_fraction(self.stages, self.microbatches, self.repeats)

    @property
    def iterations(self) -> int:
        return self.repeats * self.microbatches + self.stages - 1

    def describe(self) -> str:
        kind = "gpipe" if self.repeats == 1 else f"circular x{self.repeats}"
        return (f"pipeline: {kind} over {self.stages} stages, {self.microbatches} micro-batches per pass, "
                f"{self.passes} pass(es) per step, bubble {100 * self.bubble:.1f}%")


def make_plan(config: Config, stages: int, n_micro: int, per_pass: Optional[int] = None) -> Plan:
    """The schedule for a step of `n_micro` micro-batches, `per_pass` of them (default
    pipeline.microbatches, or all) in each pipeline pass; ConfigError when it cannot work."""
    p = config.pipeline
    repeats = p.repeats if p.schedule == "circular" else 1
    layers = config.model.n_layers
    if layers % (stages * repeats):
        raise ConfigError(f"model.n_layers ({layers}) must be a multiple of mesh.pipe x pipeline.repeats "
                          f"({stages} x {repeats}): each stage holds the same number of layers")
    m = per_pass or p.microbatches or n_micro
    if n_micro % m:
        raise ConfigError(f"a step has {n_micro} micro-batches (train.global_batch / train.micro_batch), not a "
                          f"multiple of pipeline.microbatches ({m}); change one of them")
    if repeats > 1 and m < stages:
        raise ConfigError(f"the circular schedule needs at least as many micro-batches per pass as stages, "
                          f"got {m} < mesh.pipe={stages}: lower train.micro_batch or raise pipeline.microbatches")
    return Plan(stages, repeats, m, n_micro // m)


def check_config(config: Config, stages: int) -> None:
    """Every batch size the run will use (the ramp's and the final) fits the schedule."""
    t = config.train
    micro = t.micro_batch
    for batch in [t.global_batch] + [s.batch for s in t.batch_ramp]:
        make_plan(config, stages, batch // micro)


def _uses_dropout(config: Config) -> bool:
    m = config.model
    return max(m.embed_dropout, m.attn_dropout, m.resid_dropout) > 0


# ----------------------------------------------------------------------------------------------
# The schedule


def _constrain(x: jax.Array, mesh: Mesh, *spec) -> jax.Array:
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def _batch_spec(shape_BTD: tuple, mesh: Mesh) -> tuple:
    """How the rules table splits a (batch, length, embed) activation, as a tuple of dims."""
    return tuple(rules.spec_for(("batch", "length", "embed"), shape_BTD, mesh, rules.ACTIVATION_RULES))


def stage_weights(stacked, plan: Plan, mesh: Mesh):
    """(L, ...) layer weights -> (R, S, L/(S*R), ...) with S over `pipe`, other dims as the rules say."""
    s, r = plan.stages, plan.repeats
    variables = jax.tree.leaves(stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))
    arrays, treedef = jax.tree.flatten(stacked)
    out = []
    for var, a in zip(variables, arrays):
        axes = var.get_metadata()["logical_axes"]
        rest = rules.spec_for(axes[1:], a.shape[1:], mesh, rules.PARAM_RULES, reserved=(AXIS,))
        a = a.reshape((r, s, a.shape[0] // (s * r)) + a.shape[1:])
        out.append(_constrain(a, mesh, None, AXIS, None, *rest))
    return jax.tree.unflatten(treedef, out)


def run_stages(model, plan: Plan, mesh: Mesh, x_MBTD: jax.Array, positions_MBT: jax.Array,
               segments_MBT: jax.Array, keys_ML: Optional[jax.Array] = None) -> jax.Array:
    """All layers over M micro-batches by the schedule: (M, B, T, D) in -> (M, B, T, D) out.

    keys_ML: per micro-batch and layer dropout keys (None: no dropout)."""
    S, R = plan.stages, plan.repeats
    M = x_MBTD.shape[0]
    stacked, layer = model.layer_fn()
    w = stage_weights(stacked, plan, mesh)
    per_stage = model.cfg.n_layers // (S * R)
    keys = None if keys_ML is None else keys_ML.reshape(M, R, S, per_stage)
    bspec = _batch_spec(x_MBTD.shape[1:], mesh)

    def stage(w_R, r, m, x_BTD, keys_MRL):
        """One stage's layers (of round r) on micro-batch m."""
        # GPipe indexes its one round statically: a slice that depended on the iteration would be
        # saved for the backward pass once per iteration, a copy of the stage's weights each.
        w_l = jax.tree.map(lambda a: a[0] if R == 1 else a[r], w_R)
        pos, seg = positions_MBT[m], segments_MBT[m]
        k_l = None if keys_MRL is None else keys_MRL[m, r]

        def body(x, xs):
            layer_state, key = xs
            return layer(x, layer_state, pos, seg, key, None), None

        return jax.lax.scan(body, x_BTD, (w_l, k_l))[0]

    if R > 1 and model.cfg.remat != "none":
        # The circular schedule's round is known only per iteration: the stage as a whole is
        # rematerialised as configured, so the round's weights are sliced again in the backward
        # pass instead of being saved once per iteration.
        stage = jax.checkpoint(stage, policy=model.remat_policy())
    all_stages = jax.vmap(stage, in_axes=(1, 0, 0, 0, 2), spmd_axis_name=AXIS)
    stage_ids = jnp.arange(S)
    is_first = (stage_ids == 0)[:, None, None, None]

    def keep(act_SBTD, buf_SMBTD):
        return _constrain(act_SBTD, mesh, AXIS, *bspec), _constrain(buf_SMBTD, mesh, AXIS, None, *bspec)

    def receive(act_SBTD, buf_SMBTD, t):
        """Rotate outputs one stage on; stage 0 files the last stage's output of item t - S."""
        rolled = jnp.roll(act_SBTD, 1, axis=0)
        k_in = t - S
        m_in = k_in % M
        slot = jax.lax.dynamic_index_in_dim(buf_SMBTD, m_in, axis=1, keepdims=False)
        buf = jax.lax.dynamic_update_index_in_dim(buf_SMBTD, jnp.where(k_in >= 0, rolled, slot), m_in, axis=1)
        return rolled, buf

    def iteration(carry, t):
        act, buf = carry
        rolled, buf = receive(act, buf, t)
        m0, r0 = t % M, t // M  # stage 0's item: a fresh micro-batch in round 0, else one come round
        back = jax.lax.dynamic_index_in_dim(buf, m0, axis=1, keepdims=False)
        fresh = jax.lax.dynamic_index_in_dim(x_MBTD, m0, axis=0, keepdims=False)
        inputs = jnp.where(is_first, jnp.where(r0 == 0, fresh[None], back), rolled)
        k = t - stage_ids
        out = all_stages(w, jnp.clip(k // M, 0, R - 1), k % M, inputs, keys)
        return keep(out, buf), None

    zeros = jnp.zeros((S,) + x_MBTD.shape[1:], x_MBTD.dtype)
    carry = keep(zeros, jnp.zeros((S,) + x_MBTD.shape, x_MBTD.dtype))
    (act, buf), _ = jax.lax.scan(iteration, carry, jnp.arange(plan.iterations))
    _, buf = receive(act, buf, jnp.asarray(plan.iterations))  # the last item's output reaches stage 0
    return buf[0]


# ----------------------------------------------------------------------------------------------
# Loss and gradients over the pipeline


def _sum_over_micro(fn: Callable, xs, stages: int, mesh: Mesh):
    """sum_m fn(xs[m]) (fn returns a tuple of scalars); the micro-batches are split over `pipe`
    when S divides M, so each device computes the loss of M/S of them."""
    m = jax.tree.leaves(xs)[0].shape[0]

    def scan_sum(xs_):
        def body(acc, x):
            return jax.tree.map(jnp.add, acc, fn(x)), None
        first = jax.tree.map(lambda a: a[0], xs_)
        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, first))
        return jax.lax.scan(body, zero, xs_)[0]

    if m % stages:
        return scan_sum(xs)
    free = PartitionSpec.UNCONSTRAINED  # the batch dims keep their split

    def split(a):
        return _constrain(a.reshape((stages, m // stages) + a.shape[1:]), mesh, AXIS, None, *[free] * (a.ndim - 1))

    split = jax.tree.map(split, xs)
    sums = jax.vmap(scan_sum, spmd_axis_name=AXIS)(split)  # (S,) partial sums, one per device
    return jax.tree.map(lambda a: jnp.sum(a, axis=0), sums)


def make_pipelined_loss(config: Config, spec, mesh: Mesh, head: Callable) -> Callable:
    """loss(params, batch of (M, B, T) arrays, micro_keys (M,) or None) -> (objective, aux), all M
    micro-batches through one pipeline pass. `head(model, h_BTD, micro) -> (objective, aux)` is
    the caller's loss over one micro-batch's final-normed hidden states (aux: a pytree of
    scalars); both are summed over the micro-batches."""
    stages = mesh.shape[AXIS]

    def loss(params, batch, micro_keys):
        model = nnx.merge(spec.graphdef, params)
        m = batch["inputs"].shape[0]
        plan = make_plan(config, stages, m, per_pass=m)
        x, layer_keys = jax.vmap(model.embed_inputs)(batch["inputs"], batch["positions"], micro_keys)
        h_MBTD = run_stages(model, plan, mesh, x, batch["positions"], batch["segment_ids"], layer_keys)

        def micro_loss(xs):
            h_BTD, micro = xs
            return head(model, model.final_norm(h_BTD), micro)

        return _sum_over_micro(micro_loss, (h_MBTD, batch), stages, mesh)

    return loss


def make_pipelined_grads(config: Config, spec, mesh: Mesh, head: Callable) -> Optional[Callable]:
    """None when the mesh has no pipeline; else grads(params, batch of (n, B, T), step_key) ->
    (float32 gradients summed over the n micro-batches, `head`'s aux summed), the train step's
    contract (`head` as in make_pipelined_loss).

    Micro-batch i draws dropout from fold_in(step_key, i), as without a pipeline."""
    stages = mesh.shape.get(AXIS, 1)
    if stages == 1:
        return None
    check_config(config, stages)
    if jax.process_index() == 0:
        t = config.train
        n = t.global_batch // t.micro_batch
        print(make_plan(config, stages, n).describe(), file=sys.stderr)
    grad_fn = jax.value_and_grad(make_pipelined_loss(config, spec, mesh, head), has_aux=True)
    dropout = _uses_dropout(config)

    def grads(params, batch, step_key):
        n = batch["inputs"].shape[0]
        plan = make_plan(config, stages, n)
        keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(n)) if dropout else None
        passes = jax.tree.map(lambda a: a.reshape((plan.passes, plan.microbatches) + a.shape[1:]),
                              (batch, keys))

        def one_pass(carry, xs):
            acc, aux = carry
            (_, pass_aux), g = grad_fn(params, *xs)
            return (jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g),
                    jax.tree.map(jnp.add, aux, pass_aux)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        first = jax.tree.map(lambda a: a[0], passes)
        aux_zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, *first)[0][1])
        carry = (zeros, aux_zeros)
        if plan.passes == 1:
            return one_pass(carry, first)[0]
        return jax.lax.scan(one_pass, carry, passes)[0]

    return grads


def make_pipelined_eval(config: Config, spec, mesh: Mesh, head: Callable) -> Optional[Callable]:
    """None without a pipeline; else eval(params, micro of (B, T)) -> `head`'s aux summed over the
    micro-batch, split into S pipeline micro-batches when the batch axes allow, else one."""
    stages = mesh.shape.get(AXIS, 1)
    if stages == 1:
        return None
    loss = make_pipelined_loss(config, spec, mesh, head)
    shards = math.prod(mesh.shape[a] for a in rules.ACTIVATION_RULES["batch"] if a in mesh.shape)

    def evaluate(params, micro):
        rows = micro["inputs"].shape[0]
        m = stages if rows % (stages * shards) == 0 else 1
        if config.pipeline.schedule == "circular" and m < stages:
            raise ConfigError(f"pipelined evaluation with the circular schedule splits a micro-batch into "
                              f"{stages} parts, each divisible by data*fsdp={shards}; {rows} rows are not")
        # strided rows per part keep each part's rows split over the batch axes as before
        batch = jax.tree.map(lambda a: a.reshape((rows // m, m) + a.shape[1:]).swapaxes(0, 1), micro)
        return loss(params, batch, None)[1]

    return evaluate
