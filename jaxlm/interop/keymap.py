"""The declarative map between jaxlm parameters and Hugging Face `transformers` checkpoints.

One table per family. A row says: this HF tensor (`{i}` = layer index) is made from these jaxlm
parameters (paths in the params dict; under `blocks/` they carry a leading layers dim, and the row
applies to layer i's slice) by this named layout change. Export and import both read the table;
each layout has its inverse beside it, so the two directions cannot drift apart.

Layouts (jaxlm kernels are (in..., out...), HF `nn.Linear` weights are (out, in), GPT-2's
`Conv1D` weights are (in, out)):
  same        identical array
  linear      jaxlm (in..., out...) kernel -> HF Linear (out, in): flatten then transpose
  conv1d      jaxlm (in..., out...) kernel -> GPT-2 Conv1D (in, out): flatten only
  fused_qkv   q, k, v kernels (embed, heads, head_dim) -> one Conv1D (embed, 3 * heads * head_dim)
  fused_bias  q, k, v biases (heads, head_dim) -> one (3 * heads * head_dim,)
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Row:
    hf: str  # HF state-dict key; "{i}" is the layer index
    jax: tuple[str, ...]  # jaxlm parameter paths, "/"-separated
    layout: str = "same"
    n_in: int = 1  # leading input dims of the jaxlm kernel: 2 for o, (heads, head_dim, embed)

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


LLAMA = (
    Row("model.embed_tokens.weight", ("embed",)),
    Row("model.layers.{i}.input_layernorm.weight", ("blocks/attn_norm/scale",)),
    Row("model.layers.{i}.self_attn.q_proj.weight", ("blocks/attn/q/kernel",), "linear"),
    Row("model.layers.{i}.self_attn.k_proj.weight", ("blocks/attn/k/kernel",), "linear"),
    Row("model.layers.{i}.self_attn.v_proj.weight", ("blocks/attn/v/kernel",), "linear"),
    Row("model.layers.{i}.self_attn.o_proj.weight", ("blocks/attn/o/kernel",), "linear", n_in=2),
    Row("model.layers.{i}.post_attention_layernorm.weight", ("blocks/mlp_norm/scale",)),
    Row("model.layers.{i}.mlp.gate_proj.weight", ("blocks/mlp/gate/kernel",), "linear"),
    Row("model.layers.{i}.mlp.up_proj.weight", ("blocks/mlp/up/kernel",), "linear"),
    Row("model.layers.{i}.mlp.down_proj.weight", ("blocks/mlp/down/kernel",), "linear"),
    Row("model.norm.weight", ("final_norm/scale",)),
)
LLAMA_UNTIED = (Row("lm_head.weight", ("unembed",), "linear"),)

GPT2 = (
    Row("transformer.wte.weight", ("embed",)),
    Row("transformer.wpe.weight", ("pos_embed",)),
    Row("transformer.h.{i}.ln_1.weight", ("blocks/attn_norm/scale",)),
    Row("transformer.h.{i}.ln_1.bias", ("blocks/attn_norm/bias",)),
    Row("transformer.h.{i}.attn.c_attn.weight",
        ("blocks/attn/q/kernel", "blocks/attn/k/kernel", "blocks/attn/v/kernel"), "fused_qkv"),
    Row("transformer.h.{i}.attn.c_attn.bias",
        ("blocks/attn/q/bias", "blocks/attn/k/bias", "blocks/attn/v/bias"), "fused_bias"),
    Row("transformer.h.{i}.attn.c_proj.weight", ("blocks/attn/o/kernel",), "conv1d", n_in=2),
    Row("transformer.h.{i}.attn.c_proj.bias", ("blocks/attn/o/bias",)),
    Row("transformer.h.{i}.ln_2.weight", ("blocks/mlp_norm/scale",)),
    Row("transformer.h.{i}.ln_2.bias", ("blocks/mlp_norm/bias",)),
    Row("transformer.h.{i}.mlp.c_fc.weight", ("blocks/mlp/up/kernel",), "conv1d"),
    Row("transformer.h.{i}.mlp.c_fc.bias", ("blocks/mlp/up/bias",)),
    Row("transformer.h.{i}.mlp.c_proj.weight", ("blocks/mlp/down/kernel",), "conv1d"),
    Row("transformer.h.{i}.mlp.c_proj.bias", ("blocks/mlp/down/bias",)),
    Row("transformer.ln_f.weight", ("final_norm/scale",)),
    Row("transformer.ln_f.bias", ("final_norm/bias",)),
)
GPT2_UNTIED = (Row("lm_head.weight", ("unembed",), "linear"),)


def table(family: str, tie_embeddings: bool) -> tuple[Row, ...]:
    base, untied = {"llama": (LLAMA, LLAMA_UNTIED), "gpt2": (GPT2, GPT2_UNTIED)}[family]
    return base if tie_embeddings else base + untied


# ----------------------------------------------------------------------------------------------
# Layouts: to_hf(list of jaxlm arrays) -> HF array; from_hf(HF array, jaxlm shapes) -> list of arrays


def _flat_in_out(x: np.ndarray, n_in: int) -> np.ndarray:
    return x.reshape(int(np.prod(x.shape[:n_in])), -1)


def to_hf(layout: str, arrays: list[np.ndarray], n_in: int) -> np.ndarray:
    if layout == "same":
        return arrays[0]
    if layout == "linear":
        return _flat_in_out(arrays[0], n_in).T
    if layout == "conv1d":
        return _flat_in_out(arrays[0], n_in)
    if layout == "fused_qkv":
        return np.concatenate([_flat_in_out(a, 1) for a in arrays], axis=1)
    if layout == "fused_bias":
        return np.concatenate([a.reshape(-1) for a in arrays])
    raise KeyError(layout)


def from_hf(layout: str, x: np.ndarray, shapes: list[tuple]) -> list[np.ndarray]:
    if layout == "same":
        return [x.reshape(shapes[0])]
    if layout == "conv1d":
        return [x.reshape(shapes[0])]
    if layout == "linear":
        return [x.T.reshape(shapes[0])]
    if layout in ("fused_qkv", "fused_bias"):
        axis = 1 if layout == "fused_qkv" else 0
        sizes = [int(np.prod(s[1:] if layout == "fused_qkv" else s)) for s in shapes]
        parts = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
        return [p.reshape(s) for p, s in zip(parts, shapes)]
    raise KeyError(layout)
