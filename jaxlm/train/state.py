"""The train state — parameters, optimizer state, step, learning-rate scale — created sharded.

The state is a plain dict of arrays, so Orbax saves it and optax updates it without wrappers:
    {"params": <pure dict>, "opt_state": <optax state>, "step": int32, "lr_scale": float32,
     "spike": {replicated scalars, see spikes.init_stats}}
`lr_scale` multiplies every update; loss-spike recovery lowers it for a while.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.config import Config
from jaxlm.model import Transformer
from jaxlm.parallel import rules
from jaxlm.train import spikes
from jaxlm.train.optimizer import make_optimizer, only_trainable, trainable_mask


@dataclasses.dataclass
class ModelSpec:
    """What the step functions need to rebuild the model from a params dict."""
    graphdef: Any
    axes: dict  # logical axis names per parameter
    shapes: dict  # ShapeDtypeStruct per parameter
    param_count: int


def model_spec(config: Config) -> ModelSpec:
    abstract = nnx.eval_shape(lambda: Transformer(config.model, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shapes = nnx.to_pure_dict(state)
    count = sum(x.size for x in jax.tree.leaves(shapes))
    return ModelSpec(graphdef, rules.logical_axes(abstract), shapes, count)


def init_params(config: Config, spec: ModelSpec, shardings: dict, seed: int) -> dict:
    """Parameters created directly in their shards (no device ever holds the whole model)."""
    def create(key):
        return nnx.to_pure_dict(nnx.state(Transformer(config.model, rngs=nnx.Rngs(params=key))))

    create = jax.jit(create, out_shardings=shardings)
    return create(jax.random.key(seed))


def state_shardings(spec: ModelSpec, optimizer: optax.GradientTransformation, mesh: Mesh) -> dict:
    """NamedShardings of the whole state: optimizer moments follow their parameters."""
    params = rules.param_shardings(spec.axes, spec.shapes, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(optimizer.init, spec.shapes)

    # Optax states hold copies of the params tree (moments) and scalars (counts): a leaf whose
    # path ends like a parameter's path and has its shape gets that parameter's sharding.
    param_by_path = {_path_key(p): (s, x.shape) for (p, s), x in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(spec.shapes))}

    def place(path, leaf):
        key = _path_key(path)
        for suffix_len in range(len(key), 0, -1):
            hit = param_by_path.get(key[-suffix_len:])
            if hit is not None and hit[1] == leaf.shape:
                return hit[0]
        return replicated

    opt = jax.tree_util.tree_map_with_path(place, abstract_opt)
    spike = jax.tree.map(lambda _: replicated, jax.eval_shape(spikes.init_stats))
    return {"params": params, "opt_state": opt, "step": replicated, "lr_scale": replicated, "spike": spike}


def _path_key(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def init_state(config: Config, spec: ModelSpec, optimizer, shardings: dict) -> dict:
    params = init_params(config, spec, shardings["params"], config.seed)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros([], jnp.int32), shardings["step"])
    lr_scale = jax.device_put(jnp.ones([], jnp.float32), shardings["lr_scale"])
    spike = jax.device_put(spikes.init_stats(), shardings["spike"])  # loss-spike statistics and counters
    return {"params": params, "opt_state": opt_state, "step": step, "lr_scale": lr_scale, "spike": spike}


def build_optimizer(config: Config, spec: ModelSpec) -> optax.GradientTransformation:
    """The run's optimizer; with LoRA (model.lora.rank > 0) it updates, and keeps state for, the
    adapters alone: the base weights are frozen."""
    optimizer = make_optimizer(config.optim, config.train.steps, spec.axes)
    if config.model.lora.rank > 0:
        optimizer = only_trainable(optimizer, trainable_mask(spec.shapes, lora=True))
    return optimizer
