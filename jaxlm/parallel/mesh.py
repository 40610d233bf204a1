"""The device mesh over axes (data, fsdp, tensor, pipe), built from config and checked first.

`build_mesh(config)` with the whole config also checks, before anything compiles, that the batch
and the pipeline fit the mesh (fit.py). `mesh: auto` is resolved to sizes before (jaxlm.plan.auto).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from jaxlm.config import Config, ConfigError, MeshConfig
from jaxlm.parallel import fit

AXES = ("data", "fsdp", "tensor", "pipe")
BATCH_AXES = ("data", "fsdp")  # the batch dim is split over both: FSDP is data parallel too


def mesh_shape(cfg: MeshConfig, device_count: int) -> dict[str, int]:
    sizes = {axis: getattr(cfg, axis) for axis in AXES}
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis} must be a positive size (or -1 for 'the rest'), got {size}")
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ConfigError(f"only one mesh axis may be -1, got {', '.join('mesh.' + a for a in free)}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if device_count % fixed:
            raise ConfigError(f"the mesh's fixed axes multiply to {fixed}, which does not divide the "
                              f"{device_count} devices; change mesh.* so that their product divides it")
        sizes[free[0]] = device_count // fixed
    product = math.prod(sizes.values())
    if product != device_count:
        shown = ", ".join(f"{a}={s}" for a, s in sizes.items())
        raise ConfigError(f"mesh {shown} has {product} devices but {device_count} are present; "
                          f"make the product of mesh.data/fsdp/tensor/pipe equal {device_count} "
                          "(set one axis to -1 to fill)")
    return sizes


def build_mesh(cfg: MeshConfig | Config, devices=None) -> Mesh:
    """cfg: the mesh section, or the whole config (needed for `mesh: auto`, and checked first)."""
    devices = list(jax.devices() if devices is None else devices)
    config = cfg if isinstance(cfg, Config) else None
    cfg = config.mesh if config is not None else cfg
    if cfg.auto:  # choosing sizes is planning, above this layer
        raise ConfigError("mesh: auto must be resolved to sizes before the mesh is built: pass "
                          "jaxlm.plan.auto.resolve_mesh(config) (jaxlm.main does)")
    sizes = mesh_shape(cfg, len(devices))
    if config is not None:
        fit.check_fits(config, sizes, jax.process_count())
    shape = tuple(sizes[a] for a in AXES)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh(_within_slice(cfg.dcn_axis, sizes, slices),
                                                    _across_slices(cfg.dcn_axis, slices), devices=devices)
    else:
        try:  # lays the axes out along the physical topology (ICI rings on TPU)
            grid = mesh_utils.create_device_mesh(shape, devices=devices)
        except Exception:  # CPU and odd device sets: plain order is fine there
            grid = np.array(devices).reshape(shape)
    _check_processes_own_rows(grid, sizes)
    return Mesh(grid, AXES)


def _across_slices(dcn_axis: str, slices: int) -> tuple:
    return tuple(slices if a == dcn_axis else 1 for a in AXES)


def _within_slice(dcn_axis: str, sizes: dict[str, int], slices: int) -> tuple:
    """Several TPU slices: `mesh.dcn_axis` spans them (slow links), every other axis stays inside one."""
    if sizes[dcn_axis] % slices:
        raise ConfigError(f"the {slices} slices are joined along mesh.dcn_axis={dcn_axis}, so mesh.{dcn_axis} "
                          f"({sizes[dcn_axis]}) must be a multiple of {slices}; set mesh.{dcn_axis}=-1 or "
                          "a multiple of the slice count")
    return tuple(sizes[a] // slices if a == dcn_axis else sizes[a] for a in AXES)


def _check_processes_own_rows(grid: np.ndarray, sizes: dict[str, int]) -> None:
    """Each process loads its own rows of a batch, so the devices sharing a batch shard (the
    tensor x pipe group of one data/fsdp coordinate) must all belong to one process."""
    groups = grid.reshape(sizes["data"] * sizes["fsdp"], -1)
    for group in groups:
        if len({d.process_index for d in group}) > 1:
            per_process = len(grid.flat) // len({d.process_index for d in grid.flat})
            raise ConfigError(f"mesh {fit.shown(sizes)}: a tensor x pipe group of {group.size} devices spans "
                              f"processes, but each process loads its own rows of the batch; keep "
                              f"mesh.tensor x mesh.pipe within one process's {per_process} devices "
                              "(use data or fsdp across hosts)")


def batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)
