"""Multi-head attention with grouped-query heads, RoPE (llama) and per-document causal masking."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.model.layers import Dense, Dropout, Norm, constrain


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
    if dropout.rate == 0.0 or dropout_key is None:
        # One fused call; on GPU this is where cuDNN's flash attention comes in.
        return jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask_B1TS)
    b, t, n, h = q_BTNH.shape
    kv = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(b, t, kv, n // kv, h)
    logits = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_BSKH).astype(jnp.float32) * h ** -0.5
    logits = jnp.where(mask_B1TS[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1).astype(v_BSKH.dtype), dropout_key)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v_BSKH).reshape(b, t, n, h)


class Attention(nnx.Module):
    def __init__(self, cfg, *, std: float, out_std: float, dtype, rngs: nnx.Rngs):
        d, n, kv, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, cfg.head_dim or cfg.d_model // cfg.n_heads
        bias = cfg.family == "gpt2"
        common = dict(use_bias=bias, dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.q = Dense((d,), (n, h), ("embed",), ("heads", "kv"), std=std, **common)
        self.k = Dense((d,), (kv, h), ("embed",), ("heads", "kv"), std=std, **common)
        self.v = Dense((d,), (kv, h), ("embed",), ("heads", "kv"), std=std, **common)
        self.o = Dense((n, h), (d,), ("heads", "kv"), ("embed",), std=out_std, **common)
        if cfg.qk_norm:
            norm = dict(kind="rmsnorm", eps=cfg.norm_eps, param_dtype=jnp.dtype(cfg.param_dtype))
            self.q_norm, self.k_norm = Norm(h, "kv", **norm), Norm(h, "kv", **norm)
        else:
            self.q_norm = self.k_norm = None
        self.use_rope = cfg.family == "llama"
        self.rope_theta = cfg.rope_theta
        self.dropout = Dropout(cfg.attn_dropout)

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, dropout_key: Optional[jax.Array] = None,
                 cache: Optional[dict] = None):
        """Self-attention. With `cache` ({k, v: (B, S, K, H), segment_ids: (B, S), index: ()}) the new
        keys/values are written at `index` and the queries attend over the whole cache; returns
        (output, new_cache)."""
        q = constrain(self.q(x_BTD), ("batch", "length", "heads", "kv"))
        k = constrain(self.k(x_BTD), ("batch", "length", "heads", "kv"))
        v = constrain(self.v(x_BTD), ("batch", "length", "heads", "kv"))
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
        out = constrain(self.o(out), ("batch", "length", "embed"))
        return out if cache is None else (out, cache)
