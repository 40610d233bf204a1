"""The one table from logical names to mesh axes, applied twice: to parameters and to activations.

Parameters are split for memory (FSDP shards `embed`, tensor parallelism shards heads and MLP
columns/rows, Megatron style: q/k/v and up/gate by output columns, o and down by input rows, so a
block needs one reduction per sublayer; pipeline parallelism gives each `pipe` device a contiguous
run of `layers`). Activations are split for compute (batch over the data axes, heads/MLP over
`tensor`); the pipeline's stage dim goes over `pipe` (jaxlm.parallel.pipeline).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.model import layers

PARAM_RULES: dict[str, Any] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv": None,
    "layers": "pipe",
    "length": None,
    "lora": None,  # an adapter's rank: small, kept whole (its other dim is split like the base weight's)
    "value": None,  # a value head's single output (its bias)
}

ACTIVATION_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "embed": None,
    "mlp": "tensor",
    "heads": "tensor",
    "kv": None,
    "vocab": "tensor",
}


class ShardingRuleError(ValueError):
    pass


def spec_for(axes: tuple, shape: tuple, mesh: Mesh, rules: dict[str, Any], reserved: tuple = ()) -> PartitionSpec:
    """Maps each dim's logical name through `rules`. A dim is left whole when its mesh axes are
    already used by an earlier dim, are `reserved` (taken by an enclosing vmap, e.g. DiLoCo's
    replicas on `data`) or do not divide it (e.g. a 65-symbol vocabulary on tensor=2)."""
    used: set[str] = set(reserved)
    out = []
    for name, dim in zip(axes, shape):
        if name not in rules:
            raise ShardingRuleError(f"logical axis {name!r} has no rule in jaxlm.parallel.rules")
        target = rules[name]
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        if mesh_axes and dim % math.prod(mesh.shape[a] for a in mesh_axes) == 0:
            used.update(mesh_axes)
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
        else:
            out.append(None)
    return PartitionSpec(*out)


def logical_axes(model: nnx.Module) -> dict:
    """Pure dict (same tree as the parameters) of each parameter's logical axis names."""
    state = nnx.state(model, nnx.Param)

    def names(v):
        axes = v.get_metadata().get("logical_axes")
        if axes is None or len(axes) != v.value.ndim:
            raise ShardingRuleError(f"a parameter of shape {v.value.shape} has no logical axis names "
                                    f"({axes!r}); every nnx.Param needs logical_axes=(...)")
        return tuple(axes)

    return nnx.to_pure_dict(jax.tree.map(names, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def param_shardings(axes_tree: dict, shapes_tree: dict, mesh: Mesh) -> dict:
    """NamedSharding for every parameter (shapes_tree: arrays or ShapeDtypeStructs)."""
    return jax.tree.map(
        lambda axes, x: NamedSharding(mesh, spec_for(axes, x.shape, mesh, PARAM_RULES)),
        axes_tree, shapes_tree, is_leaf=lambda x: isinstance(x, tuple))


class ActivationSharding:
    """What `activation_sharding` installs for this mesh (jaxlm.model.layers.naming_activations): called as
    `(x, axes)` it constrains an activation; `per_shard` runs a function on each device's shard of
    named arrays (for Pallas kernels, which XLA does not partition); `platform` names the devices
    the step is compiled for."""

    def __init__(self, mesh: Mesh, reserved: tuple = ()):
        self.mesh, self.reserved = mesh, reserved
        self.platform = mesh.devices.flat[0].platform

    def spec(self, x, axes: tuple) -> PartitionSpec:
        return spec_for(axes, x.shape, self.mesh, ACTIVATION_RULES, self.reserved)

    def __call__(self, x: jax.Array, axes: tuple) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, self.spec(x, axes)))

    def per_shard(self, fn, in_axes: tuple, out_axes: tuple):
        def run(*args):
            in_specs = tuple(self.spec(x, axes) for x, axes in zip(args, in_axes))
            out_shape = jax.eval_shape(fn, *args)
            mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs,
                                   out_specs=self.spec(out_shape, out_axes), check_vma=False)
            return mapped(*args)
        return run


def activation_constraint(mesh: Mesh, reserved: tuple = ()) -> ActivationSharding:
    """The mapping `activation_sharding` installs while tracing, for this mesh."""
    return ActivationSharding(mesh, reserved)


def activation_sharding(mesh: Mesh, reserved: tuple = ()):
    """`with activation_sharding(mesh):` the model's named activations (layers.constrain) traced
    in the block are constrained to this mesh by the rules table; `reserved` mesh axes are left
    to the caller (e.g. DiLoCo's replica axis)."""
    return layers.naming_activations(activation_constraint(mesh, reserved))


def sharded_activations(fn: Callable, mesh: Mesh, reserved: tuple = ()) -> Callable:
    """`fn` traced under activation_sharding(mesh): what jax.jit takes for a step on this mesh."""
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with activation_sharding(mesh, reserved):
            return fn(*args, **kwargs)
    return traced


def batch_sharding(mesh: Mesh, ndim: int = 2, leading: Optional[int] = None) -> NamedSharding:
    """Batch arrays: (batch, length) split over the data axes; with `leading` micro-batch dims first."""
    batch = tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1) or None
    lead = (None,) * (leading or 0)
    return NamedSharding(mesh, PartitionSpec(*lead, batch, *([None] * (ndim - 1))))
