"""Optax optimizers and learning-rate schedules, plus the batch-size ramp-up.

Every schedule starts with a linear warm-up from 0 to the peak rate over `warmup_steps`.

Muon (`optim.name: muon`) orthogonalises the momentum of every hidden weight matrix (Newton-Schulz)
and runs AdamW on the rest: embeddings, unembedding, position table, norms, biases. Schedule-free
AdamW (`schedule_free_adamw`) trains at one point and evaluates at another, the running average:
`eval_params` gives the parameters that evaluation and export must use.
"""

from __future__ import annotations

import bisect
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import OptimConfig, TrainConfig
from jaxlm.model.lora import is_adapter


def make_schedule(cfg: OptimConfig, total_steps: int, peak: Optional[float] = None) -> optax.Schedule:
    """The schedule of `cfg` peaking at `peak` (default optim.lr; Muon's matrices use optim.muon_lr)."""
    s = cfg.schedule
    peak, warmup = (cfg.lr if peak is None else peak), s.warmup_steps
    decay_steps = max(1, (s.decay_steps or total_steps) - warmup)
    floor = peak * s.min_lr_ratio

    if s.name == "constant":
        after = optax.constant_schedule(peak)
    elif s.name == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=s.min_lr_ratio)
    elif s.name == "linear":
        after = optax.linear_schedule(peak, floor, decay_steps)
    elif s.name == "step":
        after = optax.exponential_decay(peak, s.step_every, s.step_factor, staircase=True)
    elif s.name == "inverse_sqrt":
        scale = max(warmup, 1)

        def after(count):  # continuous with the warm-up at its end
            return peak * jnp.sqrt(scale / jnp.maximum(jnp.asarray(count, jnp.float32) + scale, 1.0))
    elif s.name == "wsd":  # warmup-stable-decay: flat, then a linear cool-down over the last fraction
        decay = max(1, int(decay_steps * s.wsd_decay_fraction))
        stable = decay_steps - decay
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [stable])
    else:
        raise ValueError(f"unknown schedule {s.name!r}")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(axes_tree: dict) -> dict:
    """Weight decay on matrices only: norms, biases and gains (one dim besides `layers`) are spared."""
    return jax.tree.map(lambda axes: len([a for a in axes if a != "layers"]) >= 2,
                        axes_tree, is_leaf=lambda x: isinstance(x, tuple))


def make_optimizer(cfg: OptimConfig, total_steps: int, axes_tree: dict) -> optax.GradientTransformation:
    schedule = make_schedule(cfg, total_steps)
    mask = decay_mask(axes_tree)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask)
    elif cfg.name == "lion":
        core = optax.lion(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=mask)
    elif cfg.name == "muon":
        # weight_decay applies to the Muon matrices; the AdamW part (embeddings, norms, biases) has none.
        core = optax.contrib.muon(
            make_schedule(cfg, total_steps, peak=cfg.muon_lr), ns_steps=cfg.ns_steps, beta=cfg.muon_momentum,
            eps=cfg.eps, weight_decay=cfg.weight_decay, adam_b1=cfg.b1, adam_b2=cfg.b2,
            adam_learning_rate=schedule, muon_weight_dimension_numbers=muon_dimensions(axes_tree))
    elif cfg.name == "schedule_free_adamw":
        # The warm-up (and any decay the user asks for) lives in the schedule; optax's own
        # warmup_steps would add a second one. Its weight decay covers every parameter (no mask).
        core = optax.contrib.schedule_free_adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                                 weight_decay=cfg.weight_decay)
    elif cfg.name == "adafactor":
        core = optax.chain(
            optax.adafactor(schedule, decay_rate=cfg.b2, eps=max(cfg.eps, 1e-30),
                            multiply_by_parameter_scale=False, clipping_threshold=None),
            optax.masked(_scaled_decay(schedule, cfg.weight_decay), mask),
        )
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    if cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)
    return core


def muon_dimensions(axes_tree: dict) -> dict:
    """Muon's reshape of each hidden matrix, from its logical axes; None (AdamW) for the rest.

    Hidden matrices map to or from the residual stream: an `embed` dim and at least one more dim
    besides `layers`, and no `vocab` or `length` dim (those are the embeddings, unembedding and
    position table; q/k/v biases are (heads, kv), without `embed`). The contracted (input) dims are `embed`
    when it comes first (q/k/v, MLP up and gate) and otherwise every dim but the last (attention
    output, MLP down); `layers` is a batch dim, so each layer's matrix is orthogonalised alone.
    """
    def dims(axes):
        body = [i for i, a in enumerate(axes) if a != "layers"]
        if len(body) < 2 or "embed" not in axes or "vocab" in axes or "length" in axes:
            return None
        if axes[body[0]] == "embed":
            return optax.contrib.MuonDimensionNumbers(reduction_axis=(body[0],), output_axis=tuple(body[1:]))
        return optax.contrib.MuonDimensionNumbers(reduction_axis=tuple(body[:-1]), output_axis=(body[-1],))

    return jax.tree.map(dims, axes_tree, is_leaf=lambda x: isinstance(x, tuple))


def eval_params(cfg: OptimConfig, params: dict, opt_state) -> dict:
    """The parameters to evaluate and export: schedule-free's average x, else the params as trained.

    Schedule-free keeps y (where gradients are taken) as the params and z in its state;
    x = (y - (1 - b1) z) / b1 is the average that the method's guarantees are about."""
    if cfg.name != "schedule_free_adamw":
        return params
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_free)
             if _is_schedule_free(s)]
    return optax.contrib.schedule_free_eval_params(found[0], params)


def _is_schedule_free(x) -> bool:
    return isinstance(x, optax.contrib.ScheduleFreeState)


def trainable_mask(params: dict, lora: bool) -> dict:
    """True per parameter that training updates: every one, or with LoRA only the adapters."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not lora or is_adapter(tuple(getattr(k, "key", k) for k in path)), params)


def only_trainable(optimizer: optax.GradientTransformation, mask: dict) -> optax.GradientTransformation:
    """`optimizer` on the parameters `mask` marks; the others get zero updates and no state (their
    moments are never allocated: with LoRA the optimizer state is the adapters' size)."""
    labels = jax.tree.map(lambda m: "train" if m else "frozen", mask)
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def _scaled_decay(schedule, weight_decay: float) -> optax.GradientTransformation:
    """Decoupled weight decay -lr(t) * wd * p, for optimizers that do not carry their own."""
    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        lr = schedule(state.count)
        updates = jax.tree.map(lambda u, p: u - lr * weight_decay * p, updates, params)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def penalty(params: dict, axes_tree: dict, l1: float, l2: float) -> jax.Array:
    """Explicit L1/L2 penalty over the decayed (matrix) parameters, added to the loss."""
    if not (l1 or l2):
        return jnp.zeros([], jnp.float32)
    mask = decay_mask(axes_tree)
    leaves = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
    total = jnp.zeros([], jnp.float32)
    for p in leaves:
        p = p.astype(jnp.float32)
        total += l1 * jnp.sum(jnp.abs(p)) + l2 * jnp.sum(jnp.square(p))
    return total


class BatchRamp:
    """Sequences per step as a function of tokens seen: the practice's small-batch start.

    `train.batch_ramp` lists stages {until_tokens, batch}; past the last, `train.global_batch`.
    The number of micro-batches per step is batch / micro_batch, and every step's batch size is a
    pure function of the step index (so a resumed run takes the same sizes).
    """

    def __init__(self, train: TrainConfig, seq_len: int):
        self.micro = train.micro_batch
        self.seq_len = seq_len
        self.stages = sorted(train.batch_ramp, key=lambda s: s.until_tokens)
        self.final = train.global_batch
        # Step index at which each stage ends, from the tokens the earlier steps consumed.
        self._stage_end_steps: list[int] = []
        step, tokens = 0, 0
        for stage in self.stages:
            if tokens < stage.until_tokens:
                per_step = stage.batch * seq_len
                n = -(-(stage.until_tokens - tokens) // per_step)
                step, tokens = step + n, tokens + n * per_step
            self._stage_end_steps.append(step)

    def batch_at(self, step: int) -> int:
        i = bisect.bisect_right(self._stage_end_steps, step)
        return self.stages[i].batch if i < len(self.stages) else self.final

    def micro_steps_at(self, step: int) -> int:
        return self.batch_at(step) // self.micro

    def tokens_before(self, step: int) -> int:
        """Tokens consumed by steps [0, step)."""
        tokens, prev = 0, 0
        for end, stage in zip(self._stage_end_steps, self.stages):
            n = max(0, min(step, end) - prev)
            tokens += n * stage.batch * self.seq_len
            prev = max(prev, end)
        return tokens + max(0, step - prev) * self.final * self.seq_len
