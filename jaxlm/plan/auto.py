"""`mesh: auto` — axis sizes from the device count, the model and the batch.

Choosing a mesh is planning, so it lives here; `jaxlm.parallel` only builds the mesh it is given.
`jaxlm.main` calls `resolve_mesh(config)` before training, so the run's config.yaml records the
sizes that were chosen.

The rule is the planner's (`jaxlm.plan.memory.recommend_mesh`): the least model parallelism whose
per-device memory estimate fits — pure data parallelism; else FSDP (one all-gather and one
reduce-scatter of the weights per micro-batch, which overlap with compute); tensor parallelism
last, at most 8 ways (an all-reduce inside every layer wants the fast links within a host). The
pipeline axis is never chosen: it needs micro-batches and costs a bubble, and pays off across
slices or hosts joined by slow links — set mesh.pipe yourself there (docs/parallelism.md).

Device memory comes from the runtime (`memory_stats()["bytes_limit"]`), else the accelerator
table for the device kind (`jaxlm.parallel.hardware`); a CPU has no limit, so there the batch
alone decides.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from jaxlm.config import Config, ConfigError, MeshConfig
from jaxlm.parallel.hardware import device_memory
from jaxlm.plan import PlanError, memory

__all__ = ["choose_mesh", "device_memory", "resolve_mesh"]


def choose_mesh(config: Config, devices: int, memory_bytes: Optional[float] = None,
                platform: str = "tpu") -> dict[str, int]:
    """Axis sizes for `devices` devices of `memory_bytes` each (None: no limit) of `platform` (tpu,
    gpu or cpu: whose compiler's memory the planner models); ConfigError, with the reason, when no
    mesh can run this model and batch."""
    work = dataclasses.replace(memory.Workload.of(config), platform=platform)
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


def resolve_mesh(config: Config, devices=None) -> Config:
    """`config` with `mesh: auto` replaced by the chosen sizes (unchanged when the mesh is explicit)."""
    if not config.mesh.auto:
        return config
    devices = list(jax.devices() if devices is None else devices)
    sizes = choose_mesh(config, len(devices), device_memory(devices[0]), devices[0].platform)
    return dataclasses.replace(config, mesh=MeshConfig(**sizes))
