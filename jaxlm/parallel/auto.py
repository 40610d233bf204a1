"""`mesh: auto` — axis sizes from the device count, the model and the batch.

The rule is the planner's (`jaxlm.plan.memory.recommend_mesh`): the least model parallelism whose
per-device memory estimate fits — pure data parallelism; else FSDP (one all-gather and one
reduce-scatter of the weights per micro-batch, which overlap with compute); tensor parallelism
last, at most 8 ways (an all-reduce inside every layer wants the fast links within a host). The
pipeline axis is never chosen: it needs micro-batches and costs a bubble, and pays off across
slices or hosts joined by slow links — set mesh.pipe yourself there (docs/parallelism.md).

Device memory comes from the runtime (`memory_stats()["bytes_limit"]`), else the planner's table
for the device kind; a CPU has no limit, so there the batch alone decides. Without the planner's
module the simple rule is pure data parallelism.
"""

from __future__ import annotations

from typing import Optional

from jaxlm.config import Config, ConfigError

AXES = ("data", "fsdp", "tensor", "pipe")


def device_memory(device) -> Optional[float]:
    """Bytes of memory one device offers, or None when it has no fixed limit (CPU) or is unknown."""
    if device.platform == "cpu":
        return None
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # some runtimes do not implement memory_stats
        limit = None
    if limit:
        return float(limit)
    try:
        from jaxlm.plan.hardware import DEVICES, device_key_for_kind
    except ImportError:
        return None
    key = device_key_for_kind(device.device_kind)
    return DEVICES[key].hbm_bytes if key else None


def _workload(config: Config):
    from jaxlm.plan.memory import Workload
    m, t = config.model, config.train
    return Workload(global_batch=t.global_batch, seq_len=config.data.seq_len, micro_batch=t.micro_batch,
                    remat=m.remat, compute_dtype=m.dtype, param_dtype=m.param_dtype, optimizer=config.optim.name,
                    loss_chunk=m.loss_chunk, pipeline_microbatches=config.pipeline.microbatches,
                    pipeline_repeats=config.pipeline.repeats if config.pipeline.schedule == "circular" else 1)


def _simple_rule(config: Config, devices: int) -> dict[str, int]:
    micro = config.train.micro_batch
    if micro % devices:
        raise ConfigError(f"mesh: auto: a micro-batch of {micro} sequences cannot be split over {devices} "
                          f"devices; make train.micro_batch a multiple of {devices}")
    return {"data": devices, "fsdp": 1, "tensor": 1, "pipe": 1}


def choose_mesh(config: Config, devices: int, memory_bytes: Optional[float] = None) -> dict[str, int]:
    """Axis sizes for `devices` devices of `memory_bytes` each (None: no limit); ConfigError, with
    the reason, when no mesh can run this model and batch."""
    try:
        from jaxlm.plan import PlanError
        from jaxlm.plan import memory
    except ImportError:
        return _simple_rule(config, devices)
    work = _workload(config)
    try:
        if memory_bytes is None:
            meshes = memory.candidate_meshes(config.model, work, devices)
            if not meshes:
                memory.recommend_mesh(config.model, work, devices, float("inf"))  # raises with the reason
            mesh = min(meshes, key=lambda m: (m.tensor, m.fsdp))
        else:
            mesh, _ = memory.recommend_mesh(config.model, work, devices, memory_bytes)
    except PlanError as e:
        raise ConfigError(f"mesh: auto: {e}") from None
    return {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor, "pipe": mesh.pipe}
