"""Where metrics go: metrics.jsonl, TensorBoard event files, optionally W&B; and MFU.

Only process 0 writes. MFU uses the standard count of 6·N + 12·L·H·Q·T FLOPs per token (N the
parameters that take part in matmuls, L layers, H heads, Q head size, T sequence length).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.config import Config
from jaxlm.extras import require
from jaxlm.plan.hardware import device_peak_flops


def flops_per_token(config: Config, param_count: int) -> float:
    m = config.model
    n = param_count
    if m.family == "gpt2":
        n -= m.max_seq_len * m.d_model  # position lookup: no matmul
    if not m.tie_embeddings:
        n -= m.vocab_size * m.d_model  # the input embedding is a lookup; the output one is a matmul
    head_dim = m.head_dim or m.d_model // m.n_heads
    return 6.0 * n + 12.0 * m.n_layers * m.n_heads * head_dim * config.data.seq_len


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
    """Peak FLOP/s of all devices together, and where the figure came from."""
    if config.train.peak_flops:
        return config.train.peak_flops * jax.device_count(), "config"
    kind = jax.devices()[0].device_kind
    per_device = device_peak_flops(kind)
    if per_device is not None:
        return per_device * jax.device_count(), f"table ({kind})"
    # CPU: the fake devices share the host's cores, so the probe measures the whole host.
    dtype = jnp.dtype(config.model.matmul_dtype or config.model.dtype)
    return measure_cpu_peak_flops(dtype), f"cpu matmul probe ({dtype.name} operands)"


def tensorboard_writer(logdir: str):
    """A tensorboardX SummaryWriter, imported without PyTorch where this process has not loaded it.

    tensorboardX imports torch, when installed, only to name a type in its annotations; that import
    costs ~1.4 s of every run's start-up on a 2-core host and is of no use to a JAX process.
    """
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
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        if config.log.tensorboard:
            self._tb = tensorboard_writer(os.path.join(workdir, "tb"))
        if use_wandb:
            import wandb
            self._wandb = wandb.init(project=config.log.wandb.project, mode=config.log.wandb.mode,
                                     dir=workdir, config=_plain(config))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _number(v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
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
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _number(v):
    if hasattr(v, "item"):
        v = v.item()
    return v


def _plain(config: Config) -> dict:
    import dataclasses
    return dataclasses.asdict(config)
