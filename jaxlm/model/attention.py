"""Multi-head attention with grouped-query heads, RoPE (llama) and per-document causal masking."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.model.layers import Dense, Dropout, Norm, constrain, lora_keys, lora_options


def rope(x_BTNH: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding (rotate-half form), computed in float32."""
    half = x_BTNH.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BTF = positions_BT[..., None].astype(jnp.float32) * freq
    sin, cos = jnp.sin(angle_BTF)[:, :, None, :], jnp.cos(angle_BTF)[:, :, None, :]
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BTNH.dtype)


def document_causal_mask(q_segments_BT: jax.Array, k_segments_BS: jax.Array,
                         q_offset: int | jax.Array = 0) -> jax.Array:
    """(B, 1, T, S) boolean: query t sees key s iff s <= t + q_offset and both are in one document."""
    t = jnp.arange(q_segments_BT.shape[1])[:, None] + q_offset
    s = jnp.arange(k_segments_BS.shape[1])[None, :]
    same_doc = q_segments_BT[:, :, None] == k_segments_BS[:, None, :]
    return (same_doc & (s <= t))[:, None, :, :]


def attend(q_BTNH, k_BSKH, v_BSKH, mask_B1TS, *, dropout: Dropout, dropout_key) -> jax.Array:
    """Softmax attention; K kv-heads are shared by N/K query heads each (grouped-query attention)."""
    drop = dropout.rate > 0.0 and dropout_key is not None
    if not drop and jax.default_backend() == "gpu":
        # One fused call, where cuDNN's flash attention comes in.
        return jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask_B1TS)
    b, t, n, h = q_BTNH.shape
    kv, g = k_BSKH.shape[2], n // k_BSKH.shape[2]
    # Heads-major before the dots, each kv-head's query group folded into its rows: XLA's CPU dots
    # want one leading batch dim pair, and leaving the transposes to the einsums made the Tiny
    # Shakespeare train step 1.1x slower (in the backward pass mostly).
    q_BKRH = q_BTNH.reshape(b, t, kv, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, h)
    k_BKSH, v_BKSH = k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)
    logits = jnp.einsum("bkrh,bksh->bkrs", q_BKRH, k_BKSH).astype(jnp.float32) * h ** -0.5
    mask_B1RS = jnp.tile(mask_B1TS, (1, 1, g, 1)) if g > 1 else mask_B1TS
    logits = jnp.where(mask_B1RS, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_BSKH.dtype)
    if drop:
        probs = dropout(probs, dropout_key)
    out_BKRH = jnp.einsum("bkrs,bksh->bkrh", probs, v_BKSH)
    return out_BKRH.reshape(b, kv, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


class Attention(nnx.Module):
    def __init__(self, cfg, *, std: float, out_std: float, dtype, rngs: nnx.Rngs):
        d, n, kv, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        bias = cfg.family == "gpt2"
        common = dict(use_bias=bias, dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs,
                      matmul_dtype=cfg.matmul_dtype)
        self.q = Dense((d,), (n, h), ("embed",), ("heads", "kv"), std=std, **common, **lora_options(cfg, "q"))
        self.k = Dense((d,), (kv, h), ("embed",), ("heads", "kv"), std=std, **common, **lora_options(cfg, "k"))
        self.v = Dense((d,), (kv, h), ("embed",), ("heads", "kv"), std=std, **common, **lora_options(cfg, "v"))
        self.o = Dense((n, h), (d,), ("heads", "kv"), ("embed",), std=out_std, **common, **lora_options(cfg, "o"))
        if cfg.qk_norm:
            norm = dict(kind="rmsnorm", eps=cfg.norm_eps, param_dtype=jnp.dtype(cfg.param_dtype))
            self.q_norm, self.k_norm = Norm(h, "kv", **norm), Norm(h, "kv", **norm)
        else:
            self.q_norm = self.k_norm = None
        self.use_rope = cfg.family == "llama"
        self.rope_theta = cfg.rope_theta
        self.dropout = Dropout(cfg.attn_dropout)

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, dropout_key: Optional[jax.Array] = None,
                 cache: Optional[dict] = None, lora_key: Optional[jax.Array] = None):
        """Self-attention. With `cache` ({k, v: (B, S, K, H), segment_ids: (B, S), index: ()}) the new
        keys/values are written at `index` and the queries attend over the whole cache; returns
        (output, new_cache). `lora_key`: the adapters' dropout in training."""
        kq, kk, kv_, ko = lora_keys(lora_key, 4)
        q = constrain(self.q(x_BTD, kq), ("batch", "length", "heads", "kv"))
        k = constrain(self.k(x_BTD, kk), ("batch", "length", "heads", "kv"))
        v = constrain(self.v(x_BTD, kv_), ("batch", "length", "heads", "kv"))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = rope(q, positions_BT, self.rope_theta), rope(k, positions_BT, self.rope_theta)
        if cache is None:
            mask = document_causal_mask(segment_ids_BT, segment_ids_BT)
        else:
            index = cache["index"]
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=1)
            seg = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids_BT, index, axis=1)
            cache = dict(k=k, v=v, segment_ids=seg, index=index + x_BTD.shape[1])
            mask = document_causal_mask(segment_ids_BT, seg, q_offset=index)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        out = attend(q, k, v, mask, dropout=self.dropout, dropout_key=dropout_key)
        out = constrain(self.o(out, ko), ("batch", "length", "embed"))
        return out if cache is None else (out, cache)
