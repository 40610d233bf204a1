"""Parameters and FLOPs counted from the model itself, for the planner and for MFU alike.

`param_table(cfg)` evaluates the model's shapes abstractly (`nnx.eval_shape`: nothing is
allocated) and reads each parameter's logical axes, so the planner's memory estimate and the
trainer's MFU cannot drift from what `Transformer` creates. The model is evaluated one layer deep
and the stacked parameters' `layers` dim set to the real depth: the layers are identical, and
tracing 80 of them abstractly would cost half a minute.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from flax import nnx

from jaxlm.model.transformer import Transformer


class ParamShape(NamedTuple):
    name: str  # dotted path in the model's state, e.g. "blocks.attn.q.kernel"
    shape: tuple[int, ...]  # per-layer parameters carry a leading `layers` dim
    axes: tuple[str, ...]  # logical axis names, one per dim


_TABLES: dict[str, tuple[ParamShape, ...]] = {}


def param_table(cfg) -> tuple[ParamShape, ...]:
    """Every parameter `Transformer(cfg)` creates: name, shape and logical axes."""
    key = repr(cfg)
    if key not in _TABLES:
        one_layer = dataclasses.replace(cfg, n_layers=1)
        abstract = nnx.eval_shape(lambda: Transformer(one_layer, rngs=nnx.Rngs(0)))
        rows = []
        for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
            axes = tuple(var.get_metadata()["logical_axes"])
            shape = tuple(var.shape)
            if axes[0] == "layers":
                shape = (cfg.n_layers,) + shape[1:]
            rows.append(ParamShape(".".join(str(p) for p in path), shape, axes))
        _TABLES[key] = tuple(rows)
    return _TABLES[key]


def param_count(cfg) -> int:
    return sum(math.prod(p.shape) for p in param_table(cfg))


def matmul_param_count(cfg) -> int:
    """Parameters that multiply activations: every Dense kernel and the unembedding (the input
    embedding when tied). Lookups (token and position embeddings), biases and norm scales are not
    counted: they cost O(1) FLOPs per parameter, not 2 per token."""
    table = {p.name: p for p in param_table(cfg)}
    kernels = sum(math.prod(p.shape) for p in table.values() if p.name.endswith(".kernel"))
    unembedding = table.get("unembed", table["embed"])
    return kernels + math.prod(unembedding.shape)


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters + attention's scores and mixing.

    Attention adds 2 (QK^T) + 2 (PV) FLOPs per head dim per key position forward, x3 with the
    backward pass, over the full (not causally halved) score matrix — the PaLM convention most MFU
    figures use. Heads and head size are read off the model's query kernel.
    """
    q = next(p for p in param_table(cfg) if p.name.endswith("attn.q.kernel"))
    layers, _, heads, head_dim = q.shape  # (layers, embed, heads, kv)
    return 6.0 * matmul_param_count(cfg) + 12.0 * layers * heads * head_dim * seq_len
