"""The training loop: state (restored or fresh), steps, evaluation, hooks, logs, checkpoints.

Read top to bottom: `Trainer.run()` is the whole loop. What it runs is built by setup.py (mesh,
objective, scheme, compiled steps); the step is in step.py (with diloco.enabled: diloco.py, behind
the same methods as schemes.Standard), the loss in objective.py, the model in jaxlm/model, the data
in jaxlm/data. Work from outside the loop (the n-shot tasks of jaxlm.main) comes in as hooks.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import storage
from jaxlm.config import REFERENCE_OBJECTIVES, Config, ConfigError, require_data
from jaxlm.train import checkpoint, records, resume
from jaxlm.train import reference as reference_lib
from jaxlm.train import faults as faults_lib, spikes
from jaxlm.train import metrics as metrics_lib
from jaxlm.train import setup as setup_lib
from jaxlm.train.incidents import Incidents
from jaxlm.train.optimizer import BatchRamp, eval_params
from jaxlm.train.preemption import Preempted
from jaxlm.train.state import init_params


@dataclasses.dataclass(frozen=True)
class Hook:
    """`fn(trainer, step)` after every `every`-th step and after the last one; the time it takes
    is not counted as training time (tokens/s, MFU)."""
    name: str
    every: int
    fn: Callable[["Trainer", int], None]


class Trainer:
    """Holds what a run needs between steps; `run()` trains to `train.steps`."""

    def __init__(self, config: Config, hooks: Sequence[Hook] = (),
                 init_params: Optional[Callable[[], Optional[dict]]] = None):
        require_data(config)  # the schema leaves sources optional: eval, export and restore read no data
        self.config = config
        self.hooks = [h for h in hooks if h.every > 0]
        self.init_params = init_params  # a fresh start's parameters (warm start), read only when needed
        if (config.init.from_ or config.init.hf) and init_params is None:
            raise ConfigError("init.from / init.hf are read by `python -m jaxlm.main`; train with "
                              "jaxlm.main.train(config), or pass init_params")
        t = config.train
        if t.eval_tasks and t.eval_tasks_every and "eval_tasks" not in {h.name for h in self.hooks}:
            raise ConfigError("train.eval_tasks runs through the n-shot hook that `python -m jaxlm.main` "
                              "registers; train with jaxlm.main.train(config), or set train.eval_tasks_every=0")
        self.is_main = jax.process_index() == 0
        self.workdir = storage.absolute(config.workdir)  # a local folder or gs://BUCKET/PATH
        records.check_writable(self.workdir, config)  # also creates it

        # The mesh (checked against the batch first), objective, state layout and compiled steps.
        self.setup = setup_lib.build(config)
        self.mesh, self.spec, self.scheme = self.setup.mesh, self.setup.spec, self.setup.scheme
        self.shardings = self.scheme.shardings
        self.data_info = setup_lib.open_data(config)
        self.ramp = BatchRamp(config.train, config.data.seq_len)
        self.writer = metrics_lib.MetricsWriter(self.workdir, config, enabled=self.is_main)
        self.incidents = Incidents(self.workdir, enabled=self.is_main, writer=self.writer)
        self.checkpoints = checkpoint.CheckpointManager(self.workdir, config, is_main=self.is_main,
                                                        incidents=self.incidents)
        self.train_step, self.eval_step = self.setup.train_step, self.setup.eval_step
        self.state = self._restore_or_init()  # auto-resume: the latest good checkpoint, else a fresh state
        self.reference = self._make_reference()  # DPO/IPO's frozen model, when its log-probabilities are not cached
        start = int(self.state["step"])
        if start < t.steps and self.is_main:  # a launch that trains: its records (a refused or finished one writes none)
            launch = records.write_run_files(self.workdir, config, self.mesh, self.spec.param_count, start)
            self.writer.write(start, {"launch": launch})  # every launch shows in metrics.jsonl, with its time
            if launch > 1:  # e.g. after a crash, maybe before any checkpoint: rows from `start` on repeat
                self.incidents.record("restart", start, launch=launch, resumed=self._restored is not None)
        self.loader = setup_lib.make_loader(config, "train")
        self.resumed_extra = self._resume_data(self._restored)  # the checkpoint's `extra` ({} on a fresh start)
        self.spikes = spikes.SpikeMonitor(  # loss-spike handling, host side (spikes.py)
            config.spikes, self.incidents, faults=faults_lib.make_injector(config),
            rollbacks=int(self.scheme.spike_counters(self.state)["rollbacks"]),
            saved=self.resumed_extra.get("spikes"))
        if self._restored is not None:
            self.spikes.checkpoint_saved(self._restored.step)  # known good once the next step is clean
        self.flops_per_token = metrics_lib.flops_per_token(config.model, config.data.seq_len)
        self.peak_flops, self.peak_source = metrics_lib.peak_flops(config)

    # ------------------------------------------------------------------------------------------
    # Batches

    def next_batch(self, step: int) -> dict[str, jax.Array]:
        micro = [next(self.loader) for _ in range(self.ramp.micro_steps_at(step))]
        batch = self.setup.batch({k: np.stack([m[k] for m in micro]) for k in self.setup.objective.batch_fields
                                  if k in micro[0]})
        return self.reference.add(batch) if self.reference else batch

    # ------------------------------------------------------------------------------------------

    def evaluate(self) -> float:
        """Mean validation loss (the objective's `loss` over its weight) over the first
        `train.eval_batches` micro-batches of the validation split (the same ones each time)."""
        return self.evaluate_metrics()["loss"]

    def evaluate_metrics(self) -> dict[str, float]:
        """Every metric of the objective (its sum over its weight; `loss` among them) over the first
        `train.eval_batches` micro-batches of the validation split, e.g. a reward model's accuracy."""
        loader = setup_lib.make_loader(self.config, "val", epochs=1)
        fields = self.setup.objective.batch_fields
        totals, count = {}, 0.0
        empty = None
        params = self.eval_params()
        for _ in range(self.config.train.eval_batches):
            # Every process runs the same number of steps (they are collective); one whose share of
            # the validation set ran out contributes all-masked batches.
            try:
                micro = next(loader)
            except StopIteration:
                if empty is None:
                    rows = self.config.train.micro_batch // jax.process_count()
                    empty = {k: np.zeros((rows, self.config.data.seq_len), np.int32) for k in fields}
                micro = empty
            batch = self.setup.batch(micro, leading=0)
            sums = self.eval_step(params, self.reference.add(batch, leading=0) if self.reference else batch)
            totals = {k: totals.get(k, 0.0) + v for k, v in sums.metrics.items()}
            count = count + sums.weight
        loader.close()
        count = float(count)
        return {k: float(v) / count if count else float("nan") for k, v in totals.items()}

    def eval_params(self) -> dict:
        """What evaluation sees: schedule-free's average point, else the parameters as trained (a
        DiLoCo state keeps no single optimizer state; schedule-free is refused with DiLoCo)."""
        if self.config.optim.name != "schedule_free_adamw":
            return self.state["params"]
        return eval_params(self.config.optim, self.state["params"], self.state["opt_state"])

    def run(self) -> dict:
        c = self.config
        t = c.train
        step = int(self.state["step"])
        summary: dict = {}
        progress = _progress(t.steps, step, enabled=self.is_main and c.log.progress)
        window_start, window_tokens = time.perf_counter(), 0.0

        batch = self.next_batch(step)
        compiled_shapes: set[int] = set()  # the step compiles once per micro-batch count (ramp stage)
        while step < t.steps:
            n_micro = batch["inputs"].shape[0]
            first_of_shape = n_micro not in compiled_shapes
            if first_of_shape:
                jax.block_until_ready(self.state)
                compile_start = time.perf_counter()
                if self.is_main:  # the first step of a shape compiles first: seconds to minutes
                    print(f"compiling the train step ({n_micro} micro-batch{'es' if n_micro > 1 else ''} "
                          "per step)...", file=sys.stderr, flush=True)
            self.state, metrics = self.train_step(self.state, batch)
            step += 1
            trigger = self.spikes.push(step, metrics, final=step >= t.steps)  # judges the step before
            if trigger is not None:  # flags persist: back to the last good checkpoint, past the spike's data
                shown = step - 1  # the progress bar has not counted this step yet
                step = self._roll_back(trigger, step)  # raises spikes.TrainingHalted when it cannot
                progress.update(step - shown)
                batch = self.next_batch(step)
                window_start, window_tokens = time.perf_counter(), 0.0
                continue
            data_state = self.loader.get_state()  # the data position after this step: saved with its checkpoint
            if step < t.steps:
                batch = self.next_batch(step)  # read the next batch while the step runs
            if first_of_shape:
                jax.block_until_ready(metrics)
                compiled_shapes.add(n_micro)
                # The first step of a shape is compile plus one step; it is kept out of tokens/s.
                logged = self._log(step, metrics, None)
                logged["compile_seconds"] = time.perf_counter() - compile_start
                if self.is_main:
                    self.writer.write(step, {"compile_seconds": logged["compile_seconds"]})
                window_start, window_tokens = time.perf_counter(), 0.0
            else:
                window_tokens += n_micro * t.micro_batch * c.data.seq_len
                logged = None
                if step % t.log_every == 0 or step == t.steps:
                    jax.block_until_ready(metrics)
                    seconds = time.perf_counter() - window_start
                    logged = self._log(step, metrics, window_tokens / max(seconds, 1e-9))
                    window_start, window_tokens = time.perf_counter(), 0.0
            if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                eval_start = time.perf_counter()
                val = self.evaluate_metrics()
                summary["val_loss"] = val["loss"]
                if self.is_main:  # val_loss, and the objective's other metrics (val_accuracy, ...)
                    self.writer.write(step, {**{f"val_{k}": v for k, v in val.items()},
                                             "tokens_seen": float(self.ramp.tokens_before(step))})
                window_start += time.perf_counter() - eval_start  # eval time is not training time
            for hook in self.hooks:
                if step % hook.every == 0 or step == t.steps:
                    hook_start = time.perf_counter()
                    hook.fn(self, step)
                    window_start += time.perf_counter() - hook_start  # hook time is not training time
            self._checkpoint(step, data_state)  # when due; raises Preempted after a signal-triggered save
            if logged:
                summary.update(logged)
            progress.update(1)
            if logged and progress.enabled:
                shown = {"loss": f"{logged['loss']:.4f}"}
                if "val_loss" in summary:  # over the first eval_batches of the split (jaxlm.eval --val: all of it)
                    shown[f"val(first {t.eval_batches} batches)"] = f"{summary['val_loss']:.4f}"
                progress.set_postfix(**shown)
        progress.close()
        self.writer.flush()
        summary["step"] = step
        return summary

    def _log(self, step: int, metrics: dict, tokens_per_sec: Optional[float]) -> dict:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        values["tokens_seen"] = float(self.ramp.tokens_before(step))
        if tokens_per_sec is not None:
            values["tokens_per_sec"] = tokens_per_sec
            values["mfu"] = tokens_per_sec * self.flops_per_token / self.peak_flops
        if self.is_main:
            self.writer.write(step, values)
        return values

    # ------------------------------------------------------------------------------------------
    # Checkpoints (jaxlm/train/checkpoint.py; docs/checkpointing.md)

    def _restore_or_init(self) -> dict:
        try:
            self.scheme.check_resumable(self.checkpoints)
            self._restored = self.checkpoints.restore_latest(self.scheme.abstract(), self.scheme.fresh_opt_state)
        except BaseException:
            self.checkpoints.close()  # e.g. a config that cannot resume: give the signal handlers back
            raise
        if self._restored is None:
            state = self.scheme.init()
            warm = self.init_params() if self.init_params is not None else None
            if warm is not None:
                state["params"] = _warm_params(state["params"], warm)
                self.incidents.record("warm_start", 0, source=self.config.init.from_ or self.config.init.hf)
            return state
        return self._restored.state

    def _make_reference(self) -> Optional[reference_lib.Reference]:
        """The frozen reference of dpo/ipo with preference.reference=model: the parameters the run
        started from (a copy of the fresh state's, or rebuilt as it was made when resuming)."""
        c = self.config
        if c.train.objective not in REFERENCE_OBJECTIVES or c.preference.reference != "model":
            return None
        if self._restored is None:
            params = jax.tree.map(jnp.copy, self.state["params"])  # the first step donates the state
        else:
            params = init_params(c, self.spec, self.shardings["params"], c.seed)
            warm = self.init_params() if self.init_params is not None else None
            if warm is not None:
                params = _warm_params(params, warm)
        return reference_lib.Reference(self.setup, params)

    def _resume_data(self, restored: Optional[checkpoint.Restored]) -> dict:
        """Puts the train loader where `restored` left it (or where a changed data setup derives)."""
        if restored is None:
            return {}
        state, derived = resume.loader_state_for(restored.loader_state, self.loader.get_state(),
                                                 jax.process_index(), jax.process_count())
        self.loader.set_state(state)
        if derived:
            self.incidents.record("data_setup_changed", restored.step, **derived)
        return restored.extra

    def restore_checkpoint(self, step: int) -> dict:
        """Rolls the run back to checkpoint `step` (state and data position); returns its `extra`."""
        abstract = self.scheme.abstract()
        self.state = None  # frees the current state's memory before the old one is read
        restored = self.checkpoints.restore_step(step, abstract)
        self.state = restored.state
        return self._resume_data(restored)

    def checkpoint_extra(self) -> dict:
        """Host-side JSON state saved with every checkpoint (the loss-spike handling adds its own)."""
        return {"spikes": self.spikes.state_dict(), **self.scheme.checkpoint_extra()}

    def _roll_back(self, trigger: spikes.Trigger, step: int) -> int:
        """Restores the last good checkpoint before `trigger`'s onset, skips the data from there
        through the spike (plus spikes.skip_margin steps), lowers lr_scale; returns the new step.
        `step`: the last step run (the one in flight, one after the trigger)."""
        self.checkpoints.wait()
        self.spikes.drain()  # the step in flight is abandoned, but its skip (if any) is recorded like the others
        live_data = self.loader.get_state()  # past everything read since the checkpoint, spike included
        now = self.scheme.spike_counters(self.state)
        while True:
            try:
                plan = self.spikes.plan_rollback(trigger, self.checkpoints.all_steps(), float(now["lr_scale"]),
                                                 where=self.checkpoints.directory)
            except spikes.TrainingHalted as halted:
                if halted.last_good is not None:  # an automatic resume must start from the good one
                    self.checkpoints.discard_after(halted.last_good, reason="halted")
                raise
            try:
                self.restore_checkpoint(plan.to_step)
                break
            except checkpoint.CheckpointError as e:
                self.spikes.forget_checkpoint(plan.to_step, str(e))
        self.checkpoints.discard_after(plan.to_step)
        # The data goes on from where it is, not from the checkpoint's position: what was read since
        # the checkpoint (the spike's data, and that of earlier attempts) is never trained on again.
        self.loader.set_state(live_data)
        first, last = plan.data_steps  # steps of this attempt whose batches are skipped (BatchRamp counts from 0)
        margin = sum(self.ramp.micro_steps_at(s - 1) for s in range(step + 1, last + 1))
        for _ in range(margin):
            next(self.loader)
        skipped = sum(self.ramp.micro_steps_at(s - 1) for s in range(first, step + 1)) + margin
        self.state = self.scheme.rolled_back(self.state, plan, now["skips"])
        self.spikes.rolled_back(plan, skipped)
        return plan.to_step

    def _checkpoint(self, step: int, data_state: dict) -> None:
        reason = self.checkpoints.save_due(step)
        if reason is None:
            return
        if reason in ("interval", "time") and not self.spikes.safe_to_save():
            return  # flags in the recent window: keep the last good checkpoint, save when they are over
        self.writer.flush()  # the metrics of every step the checkpoint holds are on storage before it
        self.checkpoints.save(step, self.state, data_state, self.checkpoint_extra(), reason=reason)
        self.spikes.checkpoint_saved(step)
        if reason == "preemption":
            self.checkpoints.wait()
            signum = self.checkpoints.preemption_signal
            self.incidents.record("preemption", step, signal=signal.Signals(signum).name)
            if self.is_main:
                print(f"\n{signal.Signals(signum).name}: checkpoint of step {step} saved in "
                      f"{self.checkpoints.directory}; run the same command to resume", file=sys.stderr, flush=True)
            raise Preempted(signum, step)

    def close(self) -> None:
        self.checkpoints.close()  # waits for a background save to commit
        self.loader.close()
        self.writer.close()


class _progress:
    """A tqdm bar with ETA on process 0; silent elsewhere."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, n):
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **kw):
        if self._bar is not None:
            self._bar.set_postfix(**kw, refresh=False)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _warm_params(fresh: dict, warm: dict) -> dict:
    """`fresh` (the run's new parameters, placed in their shards) with every leaf that `warm` has
    replaced by warm's value in the same dtype and sharding; leaves warm lacks (LoRA adapters)
    stay fresh. A warm leaf the run lacks, or of another shape, is an error."""
    flat_fresh = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])
    flat_warm = dict(jax.tree_util.tree_flatten_with_path(warm)[0])
    extra = [jax.tree_util.keystr(k) for k in flat_warm if k not in flat_fresh]
    wrong = [f"{jax.tree_util.keystr(k)} {tuple(v.shape)} vs {tuple(flat_fresh[k].shape)}"
             for k, v in flat_warm.items() if k in flat_fresh and tuple(v.shape) != tuple(flat_fresh[k].shape)]
    if extra or wrong:
        raise ConfigError(f"the warm-start parameters do not fit this run's model: unknown {extra[:3]}, "
                          f"shapes {wrong[:3]}; check model.* against the source's config")
    return jax.tree_util.tree_map_with_path(
        lambda k, x: jax.device_put(np.asarray(flat_warm[k]).astype(x.dtype), x.sharding) if k in flat_warm else x,
        fresh)


def train(config: Config, hooks: Sequence[Hook] = (), init_params=None) -> dict:
    """Trains to train.steps (resuming from the workdir's checkpoints); returns the last logged values."""
    trainer = Trainer(config, hooks, init_params)
    try:
        return trainer.run()
    finally:
        trainer.close()
