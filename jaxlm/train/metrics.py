"""Where metrics go: metrics.jsonl, TensorBoard event files, optionally W&B; and MFU.

Only process 0 writes. The workdir may be on Cloud Storage: metrics.jsonl goes through
`jaxlm.storage.LineLog`, TensorBoard event files through tensorboardX's own Cloud Storage writer
(it uploads the event file whole at each flush). MFU uses the standard count of 6·N + 12·L·H·Q·T FLOPs per token (N the
parameters that take part in matmuls, L layers, H heads, Q head size, T sequence length), counted
from the model by `jaxlm.model.counting.flops_per_token`, the function the planner uses too.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxlm import config as config_lib, storage
from jaxlm.config import Config
from jaxlm.model.counting import flops_per_token  # noqa: F401  (MFU's count, shared with the planner)
from jaxlm.parallel.hardware import device_peak_flops
from jaxlm.extras import require

# On Cloud Storage, metrics.jsonl is rewritten whole (objects have no append): at most this often,
# and before every checkpoint, so the metrics of every step a checkpoint holds are never lost.
SYNC_SECONDS = 30.0


def measure_cpu_peak_flops(dtype=jnp.float32, size: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul on this host, all cores: the practical peak of a CPU 'device'.

    The product is the one the model's layers run: operands in `dtype`, float32 accumulation and
    result. On CPUs with AMX that is several times the speed of a bfloat16-result product, so a
    probe of the latter would overstate a bfloat16 run's MFU several times over.
    """
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: probe_matmul(x, x))
    matmul(a).block_until_ready()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        matmul(a).block_until_ready()
        reps += 1
    return 2.0 * size ** 3 * reps / (time.perf_counter() - start)


def probe_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def peak_flops(config: Config) -> tuple[float, str]:
    """Peak FLOP/s of the whole run (every process's devices together) and where the figure came
    from; every process returns the same figure, so they all log the same MFU. Process 0 prints
    what the run's MFU is measured against."""
    peak, source = _run_peak_flops(config)
    if jax.process_index() == 0:
        print(describe_peak(peak, source), file=sys.stderr)
    return peak, source


def _run_peak_flops(config: Config) -> tuple[float, str]:
    if config.train.peak_flops:
        return config.train.peak_flops * jax.device_count(), "config"
    kind = jax.devices()[0].device_kind
    per_device = device_peak_flops(kind)
    if per_device is not None:
        return per_device * jax.device_count(), f"table ({kind})"
    # CPU: a process's fake devices share its host's cores, so the probe measures what the
    # process can use. All processes probe together (after a barrier), so processes that share a
    # host each measure their share; the run's peak is the slowest process's figure times the
    # process count (a synchronous step runs at the slowest process's pace).
    dtype = jnp.dtype(config.model.matmul_dtype)
    source = f"cpu matmul probe ({dtype.name} operands)"
    processes = jax.process_count()
    if processes == 1:
        return measure_cpu_peak_flops(dtype), source
    multihost_utils.sync_global_devices("jaxlm cpu peak probe")
    measured = multihost_utils.process_allgather(np.float32(measure_cpu_peak_flops(dtype)))
    return float(np.min(measured)) * processes, f"{source}, slowest of {processes} processes x {processes}"


def describe_peak(peak: float, source: str) -> str:
    """The line a run prints about what its MFU is measured against."""
    if source.startswith("cpu matmul probe"):
        return (f"mfu: against a measured matmul probe, not a datasheet peak: {peak / 1e9:.1f} GFLOP/s "
                f"({source}); set train.peak_flops to use another figure")
    return f"mfu: against a peak of {peak / 1e12:.1f} TFLOP/s ({source})"


def tensorboard_writer(logdir: str):
    """A tensorboardX SummaryWriter, imported without PyTorch where this process has not loaded it.

    tensorboardX imports torch, when installed, only to name a type in its annotations; that import
    costs ~1.4 s of every run's start-up on a 2-core host and is of no use to a JAX process.
    """
    if storage.is_remote(logdir):
        require("gcs", "google.cloud.storage", needed_by=f"TensorBoard event files in {logdir}")
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX allows
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]  # a later `import torch` (e.g. HF interop) loads it as usual
    from tensorboardX import SummaryWriter
    return SummaryWriter(logdir)


class MetricsWriter:
    def __init__(self, workdir: str, config: Config, enabled: bool):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        use_wandb = config.log.wandb.enabled and config.log.wandb.mode != "disabled"
        if use_wandb:  # before any file is opened: a missing extra is one line, not a traceback
            require("wandb", "wandb", needed_by="log.wandb.enabled")
        self._jsonl = storage.LineLog(storage.join(workdir, "metrics.jsonl"), max_delay=SYNC_SECONDS)
        if config.log.tensorboard:
            self._tb = tensorboard_writer(storage.join(workdir, "tb"))
        if use_wandb:
            import wandb
            self._wandb = wandb.init(project=config.log.wandb.project, mode=config.log.wandb.mode,
                                     dir=None if storage.is_remote(workdir) else workdir,  # W&B writes locally
                                     config=_plain(config))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _number(v) for k, v in values.items()}
        self._jsonl.append(json.dumps({"step": step, "time": round(time.time(), 3), **clean}))
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, step)

    def flush(self) -> None:
        """Everything written so far onto storage (the loop calls it before saving a checkpoint)."""
        if self._jsonl is not None:
            self._jsonl.sync()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.sync()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _number(v):
    if hasattr(v, "item"):
        v = v.item()
    return v


def _plain(config: Config) -> dict:
    return config_lib.to_dict(config)
