"""Multi-head attention with grouped-query heads, RoPE (llama) and per-document causal masking.

Three ways to compute it (`model.attention`): on TPU the splash kernel (Pallas: blockwise, never
materialises the (T, S) logits, skips blocks above the diagonal and outside the documents), on GPU
`jax.nn.dot_product_attention` (where cuDNN's fused kernel comes in), elsewhere plain XLA einsums.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from jaxlm.model import layers
from jaxlm.model.layers import Dense, Dropout, Norm, constrain, lora_keys, lora_options

SPLASH_LANES = 128  # the kernel's tiles are multiples of this many tokens
SPLASH_BLOCK = 512  # tokens per query/key tile (smaller when the sequence is shorter)


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


def target_platform() -> str:
    """The platform the step is compiled for: the mesh's (installed by jaxlm.parallel, which may
    name TPUs while this process runs on a CPU, e.g. an ahead-of-time compile), else JAX's default."""
    return getattr(layers.activation_constraint(), "platform", None) or jax.default_backend()


def use_splash(impl: str, length: int, *, dropout: bool) -> bool:
    """Whether `impl` (model.attention) means the splash kernel for this self-attention call."""
    if impl == "dense":
        return False
    fits = length % SPLASH_LANES == 0
    if impl == "splash":
        if not fits or dropout:
            raise ValueError(f"model.attention=splash needs a sequence length that is a multiple of "
                             f"{SPLASH_LANES} (got {length}) and no attention dropout; use model.attention=auto")
        return True
    return fits and not dropout and target_platform() == "tpu"


@functools.lru_cache(maxsize=None)
def _splash_kernel(group: int, length: int, interpret: bool):
    """The kernel for one kv head and its `group` query heads over (length, length), causal."""
    block = min(SPLASH_BLOCK, length)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, use_fused_bwd_kernel=True)
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * group)
    with jax.ensure_compile_time_eval():  # cached: its block tables must be constants, not tracers
        return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def splash_attend(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT) -> jax.Array:
    """Causal self-attention within documents by the splash kernel, per device shard (Mosaic kernels
    are not partitioned by XLA): batch over the data axes, kv heads (with their query groups) over
    tensor. Off TPU the kernel runs in Pallas' interpreter (slow; for tests)."""
    b, t, n, h = q_BTNH.shape
    kv = k_BTKH.shape[2]
    g = n // kv
    interpret = target_platform() != "tpu"
    q_BKGTH = (q_BTNH * h ** -0.5).reshape(b, t, kv, g, h).transpose(0, 2, 3, 1, 4)
    k_BKTH, v_BKTH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)

    def local(q, k, v, seg):  # this device's rows and kv heads
        kernel = _splash_kernel(g, t, interpret)

        def row(q_KGTH, k_KTH, v_KTH, seg_T):
            ids = splash.SegmentIds(q=seg_T, kv=seg_T)
            return jax.vmap(lambda q1, k1, v1: kernel(q1, k1, v1, segment_ids=ids))(q_KGTH, k_KTH, v_KTH)

        return jax.vmap(row)(q, k, v, seg)

    per_shard = getattr(layers.activation_constraint(), "per_shard", None)
    if per_shard is not None:
        names = ("batch", "heads", "length", "kv")
        local = per_shard(local, (("batch", "heads", "kv", "length", "kv"), names, names, ("batch", "length")),
                          ("batch", "heads", "kv", "length", "kv"))
    out_BKGTH = local(q_BKGTH, k_BKTH, v_BKTH, segment_ids_BT)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


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
        self.impl = cfg.attention

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
        if cache is None and use_splash(self.impl, x_BTD.shape[1],
                                        dropout=self.dropout.rate > 0.0 and dropout_key is not None):
            out = splash_attend(q, k, v, segment_ids_BT)
            return constrain(self.o(out), ("batch", "length", "embed"))
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
