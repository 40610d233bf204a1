"""LoRA adapters as parameters: which leaves they are, and folding them into the base weights.

A Dense layer with an adapter holds `kernel` (in..., out...), `lora_a` (in..., rank) and `lora_b`
(rank, out...), each with a leading `layers` dim in the stacked blocks (jaxlm.model.layers.Dense).
Merging replaces the kernel by kernel + scale * A B and drops the adapters: the result is the
parameter tree of the same model without LoRA (what jaxlm.export writes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm.config import LoraConfig, ModelConfig

ADAPTER_NAMES = ("lora_a", "lora_b")


def is_adapter(path: tuple) -> bool:
    """True for a parameter path (a tuple of keys) that ends in an adapter matrix."""
    return bool(path) and str(path[-1]) in ADAPTER_NAMES


def without_lora(cfg: ModelConfig) -> ModelConfig:
    """The model config of merged parameters (`cfg` with no adapters)."""
    return dataclasses.replace(cfg, lora=LoraConfig())


def add_adapters(base: dict, cfg: ModelConfig, key: jax.Array) -> dict:
    """`base` (plain weights, e.g. a pre-trained run's or a transformers checkpoint's) with fresh
    adapters for the LoRA model `cfg` (A random from `key`, B zero): the model starts as the base."""
    from jaxlm.model.transformer import Transformer  # lora.py sits below the modules that use it

    def fresh(k):  # only the adapters leave the function: XLA drops the unused base weights
        full = flatten_dict(nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=k)))))
        return {"/".join(p): v for p, v in full.items() if is_adapter(p)}

    adapters = jax.jit(fresh)(key)
    flat = flatten_dict(base)
    flat.update({tuple(p.split("/")): v for p, v in adapters.items()})
    return unflatten_dict(flat)


def merge_lora(params: dict, cfg: ModelConfig) -> dict:
    """`params` (a pure dict of a `cfg` model) with every adapter folded into its kernel, in float32
    then cast to the kernel's dtype; the tree of `without_lora(cfg)`. No adapters: returned as is."""
    if cfg.lora.rank <= 0:
        return params
    scale = cfg.lora.scale

    def fold(node):
        if not isinstance(node, dict):
            return node
        if "lora_a" not in node:
            return {k: fold(v) for k, v in node.items()}
        kernel, a, b = node["kernel"], node["lora_a"], node["lora_b"]
        # (layers, in..., rank) x (layers, rank, out...) -> (layers, in..., out...)
        layers, rank = a.shape[0], a.shape[-1]
        a_LIR = jnp.asarray(a, jnp.float32).reshape(layers, -1, rank)
        b_LRO = jnp.asarray(b, jnp.float32).reshape(layers, rank, -1)
        delta = jnp.einsum("lir,lro->lio", a_LIR, b_LRO).reshape(kernel.shape)
        merged = (jnp.asarray(kernel, jnp.float32) + scale * delta).astype(kernel.dtype)
        return {**{k: v for k, v in node.items() if k not in ADAPTER_NAMES}, "kernel": merged}

    return fold(params)
