"""The training loop: set up the workdir, mesh, data, state; run steps; evaluate; log.

Read top to bottom: `train(config)` is the whole story. The step itself is in step.py, the model in
jaxlm/model, the data in jaxlm/data.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import config as config_lib
from jaxlm.config import Config, ConfigError
from jaxlm.data import format as data_format
from jaxlm.model import layers
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import BATCH_AXES, build_mesh
from jaxlm.train import metrics as metrics_lib
from jaxlm.train.optimizer import BatchRamp
from jaxlm.train.state import build_optimizer, init_state, model_spec, state_shardings
from jaxlm.train.step import BATCH_KEYS, make_eval_step, make_train_step


class Trainer:
    """Holds what a run needs between steps; `run()` trains to `train.steps`."""

    def __init__(self, config: Config):
        self.config = config
        self.is_main = jax.process_index() == 0
        self.workdir = os.path.abspath(config.workdir)
        os.makedirs(self.workdir, exist_ok=True)

        self.mesh = build_mesh(config.mesh)
        self._check_batch_fits_mesh()
        self.data_info = self._open_data()
        self.spec = model_spec(config)
        self.optimizer = build_optimizer(config, self.spec)
        self.shardings = state_shardings(self.spec, self.optimizer, self.mesh)
        self.batch_sharding = rules.batch_sharding(self.mesh, ndim=2, leading=1)
        self.ramp = BatchRamp(config.train, config.data.seq_len)
        self.writer = metrics_lib.MetricsWriter(self.workdir, config, enabled=self.is_main)
        self._write_run_files()

        layers.set_activation_constraint(rules.activation_constraint(self.mesh))
        batch_shardings = {k: self.batch_sharding for k in BATCH_KEYS}
        self.train_step = jax.jit(
            make_train_step(config, self.spec, self.optimizer),
            in_shardings=(self.shardings, batch_shardings),
            out_shardings=(self.shardings, None), donate_argnums=0)
        micro_sharding = rules.batch_sharding(self.mesh, ndim=2)
        self.eval_step = jax.jit(make_eval_step(config, self.spec),
                                 in_shardings=(self.shardings["params"], {k: micro_sharding for k in BATCH_KEYS}))
        self.state = init_state(config, self.spec, self.optimizer, self.shardings)
        self.loader = self._loader("train")
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
            prefetch=c.data.prefetch, model_vocab_size=c.model.vocab_size)

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
            s, c = self.eval_step(self.state["params"], self._global(micro, sharding))
            nll, count = nll + s, count + c
        loader.close()
        count = float(count)
        return float(nll) / count if count else float("nan")

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
                    self.writer.write(step, {"val_loss": val})
                window_start += time.perf_counter() - eval_start  # eval time is not training time
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

    def _log(self, step: int, metrics: dict, tokens_per_sec: Optional[float]) -> dict:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        values["tokens_seen"] = float(self.ramp.tokens_before(step))
        if tokens_per_sec is not None:
            values["tokens_per_sec"] = tokens_per_sec
            values["mfu"] = tokens_per_sec * self.flops_per_token / self.peak_flops
        if self.is_main:
            self.writer.write(step, values)
        return values

    def close(self) -> None:
        layers.set_activation_constraint(None)
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
