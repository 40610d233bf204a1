"""Host-local numpy batches -> global `jax.Array`s sharded over the mesh's batch axes.

Each process loads its own `batch_rows` rows (see `loader.build_loader(process_index=...)`); the
global batch is the concatenation over processes, split over the batch axes (rows dim) and
replicated over the others (e.g. `tensor`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def to_global(
    batch: dict[str, np.ndarray], mesh: Mesh, batch_axes: Sequence[str] = ("data", "fsdp"), leading: int = 0
) -> dict[str, jax.Array]:
    """{name: (rows, ...) per process} -> {name: (rows * processes, ...) global, rows over batch_axes};
    with `leading` dims before the rows (e.g. a step's micro-batches), those are not split."""
    missing = [a for a in batch_axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"batch axes {missing} are not axes of the mesh {mesh.axis_names}")
    split = tuple(a for a in batch_axes if mesh.shape[a] > 1) or None
    sharding = NamedSharding(mesh, PartitionSpec(*[None] * leading, split))
    local_shards = _local_batch_shards(mesh, batch_axes)
    out = {}
    for name, array in batch.items():
        rows = array.shape[leading]
        if rows % local_shards:
            raise ValueError(
                f"batch[{name!r}] has {rows} rows on this process, which cannot be split into the "
                f"{local_shards} pieces this process holds along mesh axes {tuple(batch_axes)}: make the "
                f"per-process batch_rows a multiple of {local_shards}."
            )
        out[name] = jax.make_array_from_process_local_data(sharding, array)
    return out


def _local_batch_shards(mesh: Mesh, batch_axes: Sequence[str]) -> int:
    """How many distinct row blocks this process's devices hold."""
    dims = [mesh.axis_names.index(a) for a in batch_axes]
    me = jax.process_index()
    coords = {
        tuple(index[d] for d in dims)
        for index, device in np.ndenumerate(mesh.devices)
        if device.process_index == me
    }
    return len(coords)
