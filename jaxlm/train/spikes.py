"""Loss-spike handling: flag anomalous steps inside the compiled step and skip their update; roll
back to a checkpoint from before the spike when flags persist (docs/loss_spikes.md).

Two halves:
- In the step (pure jnp, `make_guard`): running statistics of the loss and of log(grad_norm)
  (the norm before clipping) live in state["spike"]. A step whose loss or gradient norm is far
  above them, or is not finite, is flagged, and its update is dropped: parameters and optimizer
  state stay exactly as they were. No host round trip is involved.
- On the host (`SpikeMonitor`): reads each step's flag one step late, so the device never waits;
  keeps the recent flags and which checkpoints are known to be good; decides when to roll back
  (`RollbackPlan`) and when to stop (`TrainingHalted`).

Step numbers follow metrics.jsonl: step s is the s-th update, and its loss is computed on the
parameters of checkpoint s-1. Checkpoint C is therefore known good once step C+1 was clean.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp

from jaxlm.config import SpikesConfig

# Metrics read back every step by the monitor (all replicated scalars).
WATCHED = ("loss", "grad_norm", "loss_z", "grad_z", "skipped")


class TrainingHalted(RuntimeError):
    """The run cannot go on by itself (spikes persist after max_rollbacks, or nothing to roll back to).

    last_good: the newest checkpoint known good before the spike (None if there is none)."""

    def __init__(self, message: str, last_good: Optional[int] = None):
        super().__init__(message)
        self.last_good = last_good


# ----------------------------------------------------------------------------------------------
# In the step


def init_stats() -> dict[str, jax.Array]:
    """state["spike"]: replicated scalars. Means/variances are over clean steps only."""
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
    return {
        "count": i32(0),  # clean steps the statistics have seen
        "loss_mean": f32(0.0), "loss_var": f32(0.0),
        "grad_mean": f32(0.0), "grad_var": f32(0.0),  # of log(grad_norm)
        "skips": i32(0),  # updates dropped, over the whole run
        "rollbacks": i32(0),  # rollbacks done, over the whole run (the budget is spikes.max_rollbacks)
        "lr_until": i32(-1),  # state step at which lr_scale returns to 1 after a rollback (-1: none)
    }


def make_guard(cfg: SpikesConfig) -> Callable:
    """guard(state, new_state, loss, grad_norm) -> (new_state, metrics).

    `new_state` is the step's proposed next state; the guard keeps `state`'s params and opt_state
    instead when the step is flagged, updates the statistics, and returns the spike metrics.
    With `cfg.enabled` False nothing is skipped; the scores are still computed and reported.
    """
    warmup = max(cfg.warmup_steps, 1)  # z-scores need at least one clean step to compare with

    def guard(state: dict, new_state: dict, loss: jax.Array, grad_norm: jax.Array):
        s = state["spike"]
        loss = jnp.asarray(loss, jnp.float32)
        grad_norm = jnp.asarray(grad_norm, jnp.float32)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        log_grad = jnp.log(jnp.maximum(grad_norm, 1e-30))
        ready = s["count"] >= warmup
        loss_spread = jnp.maximum(jnp.sqrt(s["loss_var"]), cfg.loss_spread_floor * jnp.abs(s["loss_mean"]))
        grad_spread = jnp.maximum(jnp.sqrt(s["grad_var"]), cfg.grad_spread_floor)
        loss_z = jnp.where(ready, (loss - s["loss_mean"]) / jnp.maximum(loss_spread, 1e-12), 0.0)
        grad_z = jnp.where(ready, (log_grad - s["grad_mean"]) / grad_spread, 0.0)

        flagged = ~finite | ((loss_z > cfg.loss_z) | (grad_z > cfg.grad_z))
        if not cfg.enabled:
            flagged = jnp.zeros([], bool)
        # Statistics describe normal steps: suspicious ones (loss above sustain_z) do not move them,
        # so a loss that creeps up stays visible instead of being absorbed into the mean.
        learn = finite & ~flagged & (loss_z <= cfg.sustain_z) & (grad_z <= cfg.grad_z)

        n = s["count"] + 1
        rate = jnp.maximum(1.0 / n.astype(jnp.float32), 1.0 - cfg.ema_decay)  # exact mean at first, then EMA

        def ema(mean, var, x):
            delta = x - mean
            return (jnp.where(learn, mean + rate * delta, mean),
                    jnp.where(learn, (1.0 - rate) * (var + rate * delta * delta), var))

        loss_mean, loss_var = ema(s["loss_mean"], s["loss_var"], loss)
        grad_mean, grad_var = ema(s["grad_mean"], s["grad_var"], log_grad)
        restore_lr = (s["lr_until"] >= 0) & (new_state["step"] >= s["lr_until"])
        stats = {
            "count": jnp.where(learn, n, s["count"]),
            "loss_mean": loss_mean, "loss_var": loss_var, "grad_mean": grad_mean, "grad_var": grad_var,
            "skips": s["skips"] + flagged.astype(jnp.int32),
            "rollbacks": s["rollbacks"],
            "lr_until": jnp.where(restore_lr, -1, s["lr_until"]),
        }
        out = dict(new_state, spike=stats)
        if cfg.enabled:
            keep = lambda old, new: jnp.where(flagged, old, new)  # noqa: E731
            out["params"] = jax.tree.map(keep, state["params"], new_state["params"])
            out["opt_state"] = jax.tree.map(keep, state["opt_state"], new_state["opt_state"])
        out["lr_scale"] = jnp.where(restore_lr, jnp.ones_like(new_state["lr_scale"]), new_state["lr_scale"])
        score = jnp.where(finite, jnp.maximum(loss_z, grad_z), jnp.inf)
        metrics = {
            "spike_score": score,
            "loss_z": jnp.where(finite, loss_z, jnp.inf),
            "grad_z": jnp.where(finite, grad_z, jnp.inf),
            "skipped": flagged.astype(jnp.int32),
            "skips": stats["skips"],
            "rollbacks": stats["rollbacks"],
        }
        return out, metrics

    return guard


# ----------------------------------------------------------------------------------------------
# On the host


@dataclasses.dataclass
class Trigger:
    """Flags persisted: the episode that began at `onset` calls for a rollback at `step`."""
    step: int
    onset: int
    reason: str
    flagged_steps: list[int]


@dataclasses.dataclass
class RollbackPlan:
    number: int  # 1 for the first rollback of the run
    trigger: Trigger
    to_step: int  # the checkpoint restored
    data_steps: tuple[int, int]  # [first, last]: the steps of this attempt whose batches are never trained on
    lr_scale: float  # lr_scale from to_step on ...
    lr_until: int  # ... until this step (-1: unchanged)

    @property
    def steps_lost(self) -> int:
        return self.trigger.step - self.to_step


class SpikeMonitor:
    """Host side of spike handling: one `push` per step, `checkpoint_saved` after each save.

    incidents: anything with `record(kind, step, **details)` (train.incidents.Incidents).
    faults: an optional faults.FaultInjector, whose hits are recorded as incidents.
    rollbacks: rollbacks done so far in the run (state["spike"]["rollbacks"]).
    saved: `state_dict()` as saved with the checkpoint the run resumes from.
    """

    def __init__(self, cfg: SpikesConfig, incidents: Optional[Any] = None, faults: Optional[Any] = None,
                 rollbacks: int = 0, saved: Optional[dict] = None):
        self.cfg = cfg
        self.incidents = incidents
        self.faults = faults
        self.rollbacks = int(rollbacks)
        self.history: list[dict] = []  # this process's incidents, for the message when halting
        self._good: set[int] = set(int(s) for s in (saved or {}).get("good_checkpoints", []))
        self._unverified: set[int] = set()
        self._pending: Optional[tuple[int, dict]] = None
        self.reset()

    def reset(self) -> None:
        """Forget the current episode (after a rollback, training goes on from a clean state)."""
        self._flags: collections.deque[int] = collections.deque()
        self._streak_start: Optional[int] = None
        self._onset: Optional[int] = None  # first suspicious step of the current episode
        self._last_suspicious = 0
        self._pending = None

    # -- feeding

    def push(self, step: int, metrics: dict, final: bool = False) -> Optional[Trigger]:
        """Hands over step `step`'s metrics (device arrays, not waited for) and judges the previous
        step's, which are done by now: the device keeps working while the host reads. `final`:
        judge this step too (the last step of training, before its checkpoint). With spikes.enabled
        off the host does nothing (and the step never waits)."""
        if not self.cfg.enabled:
            return None
        previous, self._pending = self._pending, (step, {k: metrics[k] for k in WATCHED})
        trigger = self._judge(previous) if previous else None
        if trigger is None and final:
            trigger = self.drain()
        return trigger

    def drain(self) -> Optional[Trigger]:
        """Judges the last pushed step, waiting for it."""
        previous, self._pending = self._pending, None
        return self._judge(previous) if previous else None

    def state_dict(self) -> dict:
        """JSON saved with every checkpoint, so that a resumed run knows which older checkpoints are good."""
        return {"good_checkpoints": sorted(self._good)}

    def _judge(self, pending: tuple[int, dict]) -> Optional[Trigger]:
        step, arrays = pending
        values = {k: float(v) for k, v in jax.device_get(arrays).items()}
        return self.observe(step, **values)

    def observe(self, step: int, loss: float, grad_norm: float, loss_z: float, grad_z: float,
                skipped: float) -> Optional[Trigger]:
        """One step's verdict from the compiled step; returns a Trigger when a rollback is due."""
        c = self.cfg
        if self.faults is not None:
            for fault in self.faults.hits(step, self.rollbacks):
                self._record("fault", step, fault=fault.kind, factor=fault.factor if fault.kind == "lr" else None,
                             persistent=fault.persistent, first_step=fault.step, steps=fault.steps)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        flagged = skipped > 0
        high = not finite or loss_z > c.sustain_z
        if flagged:
            reason = ("not finite" if not finite else
                      f"loss z {loss_z:.1f} > {c.loss_z:g}" if loss_z > c.loss_z else
                      f"grad-norm z {grad_z:.1f} > {c.grad_z:g}")
            self._record("skip", step, loss=_num(loss), grad_norm=_num(grad_norm), loss_z=_num(loss_z),
                         grad_z=_num(grad_z), reason=reason)
            self._flags.append(step)
        while self._flags and self._flags[0] <= step - c.window:
            self._flags.popleft()
        if not high:
            self._streak_start = None
        elif self._streak_start is None:
            self._streak_start = step
        if flagged or high:
            self._onset = step if self._onset is None else self._onset
            self._last_suspicious = step
        elif self._onset is not None and step - self._last_suspicious >= c.window:
            self._onset = None  # a whole window without anything suspicious: the episode is over

        if step - 1 in self._unverified:  # checkpoint step-1 holds the parameters this step evaluated
            self._unverified.discard(step - 1)
            if not (flagged or high):
                self._good.add(step - 1)

        reason = None
        if c.max_flags and len(self._flags) >= c.max_flags:
            reason = f"{len(self._flags)} of the last {c.window} steps flagged"
        elif c.sustain_steps and self._streak_start is not None and step - self._streak_start + 1 >= c.sustain_steps:
            reason = f"loss z-score above {c.sustain_z:g} for {step - self._streak_start + 1} steps"
        if reason is None:
            return None
        onset = self._onset if self._onset is not None else step
        return Trigger(step=step, onset=onset, reason=reason, flagged_steps=list(self._flags))

    # -- checkpoints

    @property
    def in_episode(self) -> bool:
        """A flagged or high-loss step in the last `window` steps: a checkpoint now could hold damaged
        parameters."""
        return self._onset is not None

    def safe_to_save(self) -> bool:
        return not self.in_episode

    def checkpoint_saved(self, step: int) -> None:
        self._unverified.add(int(step))

    def good_checkpoints(self) -> list[int]:
        return sorted(self._good)

    def forget_checkpoint(self, step: int, why: str) -> None:
        """A good checkpoint that cannot be restored is no rollback target."""
        self._good.discard(int(step))
        self._record("rollback_target_unusable", step, why=why)

    # -- decisions

    def plan_rollback(self, trigger: Trigger, available: Iterable[int], lr_scale_now: float = 1.0,
                      where: str = "") -> RollbackPlan:
        """The rollback for `trigger`, or TrainingHalted when there is none to do.

        available: checkpoint steps that exist now (the manager may have deleted old ones).
        """
        c = self.cfg
        available = sorted(int(s) for s in available)
        self._record("spike", trigger.onset, detected_at=trigger.step, reason=trigger.reason,
                     flagged_steps=trigger.flagged_steps)
        if not c.rollback:
            self._halt(trigger, available, "spikes.rollback is off", "set spikes.rollback=true, or resume from a "
                       "checkpoint with a lower optim.lr")
        if self.rollbacks >= c.max_rollbacks:
            self._halt(trigger, available, f"{self.rollbacks} rollbacks already done (spikes.max_rollbacks)",
                       "the instability keeps coming back: inspect the data of the flagged steps, resume "
                       "from the last good checkpoint with a lower optim.lr, or raise spikes.max_rollbacks")
        candidates = [s for s in available if s in self._good and s + 1 < trigger.onset]
        if not candidates:
            self._halt(trigger, available, f"no checkpoint known to be good before the onset at step "
                       f"{trigger.onset} (checkpoints{' in ' + where if where else ''}: {available or 'none'})",
                       "save checkpoints more often (checkpoint.every_steps well below the steps between "
                       "spikes) and keep at least two (checkpoint.keep_last >= 2)")
        to_step = max(candidates)
        last = trigger.step + max(c.skip_margin, 1)  # the step after the trigger has read its batch already
        lr_scale = lr_scale_now * c.lr_factor
        plan = RollbackPlan(number=self.rollbacks + 1, trigger=trigger, to_step=to_step,
                            data_steps=(to_step + 1, last), lr_scale=lr_scale,
                            lr_until=to_step + c.lr_steps if lr_scale < 1.0 else -1)
        return plan

    def rolled_back(self, plan: RollbackPlan, skipped_batches: int) -> None:
        """Records a rollback that the trainer has carried out, and starts afresh."""
        self.rollbacks = plan.number
        self._record("rollback", plan.trigger.step, number=plan.number, to_step=plan.to_step,
                     onset=plan.trigger.onset, reason=plan.trigger.reason, steps_lost=plan.steps_lost,
                     skipped_data_steps=list(plan.data_steps), skipped_batches=skipped_batches,
                     lr_scale=plan.lr_scale, lr_until=plan.lr_until)
        self._unverified = {s for s in self._unverified if s <= plan.to_step}
        self._good = {s for s in self._good if s <= plan.to_step}
        self.reset()

    def _halt(self, trigger: Trigger, available: list[int], why: str, advice: str) -> None:
        good = [s for s in available if s in self._good and s + 1 < trigger.onset]
        last_good = max(good) if good else None
        self._record("halt", trigger.step, reason=why, onset=trigger.onset, trigger=trigger.reason,
                     last_good_checkpoint=last_good)
        lines = [f"{e['kind']} at step {e['step']}: " + ", ".join(
            f"{k}={v}" for k, v in e.items() if k not in ("kind", "step", "time") and v is not None)
            for e in self.history if e["kind"] in ("spike", "rollback", "halt")]
        raise TrainingHalted(
            f"training stopped at step {trigger.step}: {trigger.reason} since step {trigger.onset}, and {why}. "
            f"Last good checkpoint: {'none' if last_good is None else 'step ' + str(last_good)}. What to do: "
            f"{advice}. Incident history (also in incidents.jsonl):\n  " + "\n  ".join(lines[-20:]),
            last_good=last_good)

    def _record(self, kind: str, step: int, **details) -> None:
        entry = {"kind": kind, "step": int(step), **details}
        self.history.append(entry)
        if self.incidents is not None:
            self.incidents.record(kind, step, **details)


def _num(x: float):
    """JSON-friendly: non-finite numbers as strings."""
    return x if math.isfinite(x) else str(x)


def rolled_back_state(restored: dict, plan: RollbackPlan, skips: int) -> dict:
    """The restored checkpoint's state with this run's counters and the lowered learning rate.

    skips: updates dropped so far in the run (the checkpoint's count is older)."""
    def put(value, like):
        return jax.device_put(jnp.asarray(value, like.dtype), like.sharding)

    spike = dict(restored["spike"])
    spike["skips"] = put(skips, spike["skips"])
    spike["rollbacks"] = put(plan.number, spike["rollbacks"])
    spike["lr_until"] = put(plan.lr_until, spike["lr_until"])
    return dict(restored, spike=spike, lr_scale=put(plan.lr_scale, restored["lr_scale"]))
