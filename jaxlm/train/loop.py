"""The training loop: set up the workdir, mesh, data, state; run steps; evaluate; log.

Read top to bottom: `train(config)` is the whole story. The step itself is in step.py (with
diloco.enabled: diloco.py, behind the same methods as `_Standard` below), the model in jaxlm/model,
the data in jaxlm/data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Optional

import jax
import numpy as np

from jaxlm import config as config_lib
from jaxlm.config import Config, ConfigError
from jaxlm.data import format as data_format
from jaxlm.model import layers
from jaxlm.parallel import pipeline, rules
from jaxlm.parallel.mesh import BATCH_AXES, build_mesh
from jaxlm.train import checkpoint, diloco, resume
from jaxlm.train import faults as faults_lib, spikes
from jaxlm.train import metrics as metrics_lib
from jaxlm.train.incidents import Incidents
from jaxlm.train.optimizer import BatchRamp, eval_params
from jaxlm.train.preemption import Preempted
from jaxlm.train.state import build_optimizer, init_state, model_spec, state_shardings
from jaxlm.train.step import BATCH_KEYS, make_eval_step, make_train_step


class Trainer:
    """Holds what a run needs between steps; `run()` trains to `train.steps`."""

    def __init__(self, config: Config):
        self.config = config
        self.is_main = jax.process_index() == 0
        self.workdir = os.path.abspath(config.workdir)
        os.makedirs(self.workdir, exist_ok=True)

        self.mesh = build_mesh(config)  # also resolves `mesh: auto` and checks the model fits
        self._check_batch_fits_mesh()
        self.data_info = self._open_data()
        self.spec = model_spec(config)
        # The state's layout and its step: the ordinary one, or DiLoCo's replicas (diloco.py).
        self.scheme = diloco.DiLoCo(config, self.spec, self.mesh) if config.diloco.enabled else \
            _Standard(config, self.spec, self.mesh)
        self.shardings = self.scheme.shardings
        self.batch_sharding = rules.batch_sharding(self.mesh, ndim=2, leading=1)
        self.ramp = BatchRamp(config.train, config.data.seq_len)
        self.writer = metrics_lib.MetricsWriter(self.workdir, config, enabled=self.is_main)
        self._write_run_files()
        self.incidents = Incidents(self.workdir, enabled=self.is_main, writer=self.writer)
        self.checkpoints = checkpoint.CheckpointManager(self.workdir, config, is_main=self.is_main,
                                                        incidents=self.incidents)

        layers.set_activation_constraint(rules.activation_constraint(self.mesh))
        self.train_step = self.scheme.jit(self.scheme.step, self.batch_sharding)
        micro_sharding = rules.batch_sharding(self.mesh, ndim=2)
        self.eval_step = jax.jit(make_eval_step(config, self.spec, mesh=self.mesh),
                                 in_shardings=(self.shardings["params"], {k: micro_sharding for k in BATCH_KEYS}))
        self.state = self._restore_or_init()  # auto-resume: the latest good checkpoint, else a fresh state
        self.loader = self._loader("train")
        self.resumed_extra = self._resume_data(self._restored)  # the checkpoint's `extra` ({} on a fresh start)
        self.spikes = spikes.SpikeMonitor(  # loss-spike handling, host side (spikes.py)
            config.spikes, self.incidents, faults=faults_lib.make_injector(config),
            rollbacks=int(self.scheme.spike_counters(self.state)["rollbacks"]),
            saved=self.resumed_extra.get("spikes"))
        if self._restored is not None:
            self.spikes.checkpoint_saved(self._restored.step)  # known good once the next step is clean
        self.flops_per_token = metrics_lib.flops_per_token(config, self.spec.param_count)
        self.peak_flops, self.peak_source = metrics_lib.peak_flops(config)

    # ------------------------------------------------------------------------------------------
    # Set-up checks: all of them before the first compile.

    def _check_batch_fits_mesh(self) -> None:
        t = self.config.train
        shards = int(np.prod([self.mesh.shape[a] for a in BATCH_AXES]))
        micro = t.micro_batch or t.global_batch
        if micro % shards:
            raise ConfigError(
                f"train.micro_batch ({micro}) must be divisible by the mesh's batch axes "
                f"data*fsdp = {shards}; change the batch or mesh.data/mesh.fsdp")
        if micro % jax.process_count():
            raise ConfigError(f"train.micro_batch ({micro}) must be divisible by the process count "
                              f"({jax.process_count()})")

    def _open_data(self):
        from jaxlm.data.loader import open_dataset
        infos = []
        for i, source in enumerate(self.config.data.sources):
            try:
                info = open_dataset(source.path, expected_vocab_size=self.config.model.vocab_size)
            except data_format.DataFormatError as e:
                hint = (f" (this run's data comes from `python -m data_prep --config {self.config.data.prepare}`)"
                        if self.config.data.prepare else "")
                raise ConfigError(f"data.sources[{i}]: {e}{hint}") from None
            infos.append(info)
        return infos

    def _loader(self, split: str, *, epochs: Optional[int] = None):
        from jaxlm.data.loader import build_loader
        c = self.config
        rows = (c.train.micro_batch or c.train.global_batch) // jax.process_count()
        return build_loader(
            sources=[(s.path, s.weight) for s in c.data.sources], split=split,
            seq_len=c.data.seq_len, batch_rows=rows, seed=c.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            num_epochs=epochs, shuffle=split == "train",
            worker_count=c.data.worker_count if split == "train" else 0,
            prefetch=c.data.prefetch, model_vocab_size=c.model.vocab_size,
            shuffle_rows=c.data.shuffle_rows if split == "train" else 0)

    def _write_run_files(self) -> None:
        if not self.is_main:
            return
        with open(os.path.join(self.workdir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(config_lib.dump_yaml(self.config))
        run = {
            "argv": sys.argv,
            "python": platform.python_version(),
            "versions": _library_versions(),
            "git_sha": _git_sha(),
            "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind,
            "process_count": jax.process_count(),
            "mesh": dict(self.mesh.shape),
            "model_params": self.spec.param_count,
        }
        stages = self.mesh.shape.get(pipeline.AXIS, 1)
        if stages > 1:  # the schedule at the full batch (a batch ramp starts with fewer micro-batches)
            t = self.config.train
            plan = pipeline.make_plan(self.config, stages, t.global_batch // (t.micro_batch or t.global_batch))
            run["pipeline"] = {**dataclasses.asdict(plan), "bubble": plan.bubble, "describe": plan.describe()}
        with open(os.path.join(self.workdir, "run.json"), "w", encoding="utf-8") as f:
            json.dump(run, f, indent=2)

    # ------------------------------------------------------------------------------------------
    # Batches

    def _global(self, local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
        out = {}
        for key in BATCH_KEYS:
            x = np.asarray(local[key], np.int32)
            global_shape = list(x.shape)
            global_shape[-2] *= jax.process_count()
            out[key] = jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))
        return out

    def next_batch(self, step: int) -> dict[str, jax.Array]:
        micro = [next(self.loader) for _ in range(self.ramp.micro_steps_at(step))]
        stacked = {k: np.stack([m[k] for m in micro]) for k in BATCH_KEYS}
        return self._global(stacked, self.batch_sharding)

    # ------------------------------------------------------------------------------------------

    def evaluate(self) -> float:
        """Mean validation loss per token over `train.eval_batches` micro-batches (same ones each time)."""
        loader = self._loader("val", epochs=1)
        sharding = rules.batch_sharding(self.mesh, ndim=2)
        nll, count = 0.0, 0.0
        empty = None
        params = self.eval_params()
        for _ in range(self.config.train.eval_batches):
            # Every process runs the same number of steps (they are collective); one whose share of
            # the validation set ran out contributes all-masked batches.
            try:
                micro = next(loader)
            except StopIteration:
                if empty is None:
                    rows = (self.config.train.micro_batch or self.config.train.global_batch) // jax.process_count()
                    empty = {k: np.zeros((rows, self.config.data.seq_len), np.int32) for k in BATCH_KEYS}
                micro = empty
            s, c = self.eval_step(params, self._global(micro, sharding))
            nll, count = nll + s, count + c
        loader.close()
        count = float(count)
        return float(nll) / count if count else float("nan")

    def eval_params(self) -> dict:
        """What evaluation sees: schedule-free's average point, else the parameters as trained."""
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
                window_tokens += n_micro * (t.micro_batch or t.global_batch) * c.data.seq_len
                logged = None
                if step % t.log_every == 0 or step == t.steps:
                    jax.block_until_ready(metrics)
                    seconds = time.perf_counter() - window_start
                    logged = self._log(step, metrics, window_tokens / max(seconds, 1e-9))
                    window_start, window_tokens = time.perf_counter(), 0.0
            if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                eval_start = time.perf_counter()
                val = self.evaluate()
                summary["val_loss"] = val
                if self.is_main:
                    self.writer.write(step, {"val_loss": val, "tokens_seen": float(self.ramp.tokens_before(step))})
                window_start += time.perf_counter() - eval_start  # eval time is not training time
            if t.eval_tasks and t.eval_tasks_every and (step % t.eval_tasks_every == 0 or step == t.steps):
                window_start += self._run_eval_tasks(step)
            self._checkpoint(step, data_state)  # when due; raises Preempted after a signal-triggered save
            if logged:
                summary.update(logged)
            progress.update(1)
            if logged and progress.enabled:
                progress.set_postfix(loss=f"{logged['loss']:.4f}",
                                     **({"val": f"{summary['val_loss']:.4f}"} if "val_loss" in summary else {}))
        progress.close()
        self.writer.flush()
        summary["step"] = step
        return summary

    def _run_eval_tasks(self, step: int) -> float:
        """The n-shot tasks of `train.eval_tasks` on the current parameters; returns the seconds taken."""
        from jaxlm.eval import run_tasks, scalars
        start = time.perf_counter()
        t = self.config.train
        result = run_tasks(self.eval_params(), self.config, t.eval_tasks, shots=t.eval_tasks_shots,
                           limit=t.eval_tasks_limit, data_root=t.eval_tasks_data or None)
        if self.is_main:
            self.writer.write(step, scalars(result))
        return time.perf_counter() - start

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
            return self.scheme.init()
        return self._restored.state

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
        layers.set_activation_constraint(None)
        self.loader.close()
        self.writer.close()


class _Standard:
    """The ordinary state and step (state.py, step.py): one set of parameters, every step's gradients
    reduced over the data axes. `diloco.DiLoCo` has the same methods, for its replicas."""

    def __init__(self, config: Config, spec, mesh):
        self.config, self.spec = config, spec
        self.optimizer = build_optimizer(config, spec)
        self.shardings = state_shardings(spec, self.optimizer, mesh)
        self.step = make_train_step(config, spec, self.optimizer, mesh=mesh)
        # a resume with another optimizer continues with a fresh optimizer state (checkpoint.py)
        self.fresh_opt_state = jax.jit(self.optimizer.init, out_shardings=self.shardings["opt_state"])

    def init(self) -> dict:
        return init_state(self.config, self.spec, self.optimizer, self.shardings)

    def abstract(self) -> dict:
        return checkpoint.abstract_state(self.config, self.spec, self.optimizer, self.shardings)

    def jit(self, fn, batch_sharding):
        return jax.jit(fn, in_shardings=(self.shardings, {k: batch_sharding for k in BATCH_KEYS}),
                       out_shardings=(self.shardings, None), donate_argnums=0)

    def spike_counters(self, state: dict) -> dict:
        return jax.device_get({"skips": state["spike"]["skips"], "lr_scale": state["lr_scale"],
                               "rollbacks": state["spike"]["rollbacks"]})

    def rolled_back(self, restored: dict, plan: spikes.RollbackPlan, skips) -> dict:
        return spikes.rolled_back_state(restored, plan, int(skips))

    def checkpoint_extra(self) -> dict:
        return {}

    def check_resumable(self, manager: checkpoint.CheckpointManager) -> None:
        diloco.check_resumable(manager, self.config, None)  # refuses a DiLoCo run's checkpoints


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


def _library_versions() -> dict:
    from importlib import metadata
    names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "array-record", "sentencepiece",
             "tensorboardX", "numpy"]
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_sha() -> Optional[str]:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def train(config: Config) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        trainer.close()
