"""The decoder-only transformer, two families selected by config:

  gpt2:  LayerNorm, learned positions, GELU MLP, biases
  llama: RMSNorm, RoPE, SwiGLU MLP, grouped-query attention, no biases

Pre-norm residual blocks; the layers' parameters are stacked along a leading `layers` dim and run
with `jax.lax.scan` (one compiled block however deep the model), optionally rematerialised.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.model.attention import Attention
from jaxlm.model.layers import MATMUL_OUTPUT, Dense, Dropout, Norm, constrain, init_stds, lora_keys, lora_options, param


class MLP(nnx.Module):
    def __init__(self, cfg, *, std: float, out_std: float, dtype, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.gated = cfg.family == "llama"
        common = dict(use_bias=not self.gated, dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs,
                      matmul_dtype=cfg.matmul_dtype)
        self.up = Dense((d,), (f,), ("embed",), ("mlp",), std=std, **common, **lora_options(cfg, "up"))
        self.gate = (Dense((d,), (f,), ("embed",), ("mlp",), std=std, **common, **lora_options(cfg, "gate"))
                     if self.gated else None)
        self.down = Dense((f,), (d,), ("mlp",), ("embed",), std=out_std, **common, **lora_options(cfg, "down"))

    def __call__(self, x_BTD, lora_key=None):
        k_up, k_gate, k_down = lora_keys(lora_key, 3)
        if self.gated:
            h = jax.nn.silu(self.gate(x_BTD, k_gate)) * self.up(x_BTD, k_up)
        else:
            h = jax.nn.gelu(self.up(x_BTD, k_up), approximate=True)
        return self.down(constrain(h, ("batch", "length", "mlp")), k_down)


class Block(nnx.Module):
    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        std, out_std = init_stds(cfg.init, cfg.init_std, cfg.d_model, cfg.n_layers)
        norm = dict(kind="layernorm" if cfg.family == "gpt2" else "rmsnorm", eps=cfg.norm_eps,
                    param_dtype=jnp.dtype(cfg.param_dtype))
        self.attn_norm = Norm(cfg.d_model, "embed", **norm)
        self.attn = Attention(cfg, std=std, out_std=out_std, dtype=dtype, rngs=rngs)
        self.mlp_norm = Norm(cfg.d_model, "embed", **norm)
        self.mlp = MLP(cfg, std=std, out_std=out_std, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(cfg.resid_dropout)
        self.lora_dropout = cfg.lora.rank > 0 and cfg.lora.dropout > 0

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, key=None, cache=None):
        k_lora_attn = k_lora_mlp = None
        if key is not None and self.lora_dropout:  # the adapters' own keys (without them: as before)
            key, k_lora_attn, k_lora_mlp = jax.random.split(key, 3)
        k_attn, k_res1, k_res2 = jax.random.split(key, 3) if key is not None else (None, None, None)
        h = self.attn(self.attn_norm(x_BTD), positions_BT, segment_ids_BT, k_attn, cache, k_lora_attn)
        if cache is not None:
            h, cache = h
        x_BTD = x_BTD + self.dropout(h, k_res1)
        x_BTD = x_BTD + self.dropout(self.mlp(self.mlp_norm(x_BTD), k_lora_mlp), k_res2)
        x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
        return x_BTD if cache is None else (x_BTD, cache)


def _stack_blocks(cfg, dtype, rngs: nnx.Rngs) -> Block:
    """n_layers Blocks merged into one whose every parameter has a leading `layers` dim."""
    blocks = [Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.n_layers)]
    graphdef = nnx.graphdef(blocks[0])
    states = [nnx.state(b) for b in blocks]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def name_layers(v):
        v.set_metadata("logical_axes", ("layers",) + tuple(v.logical_axes))
        return v

    stacked = jax.tree.map(name_layers, stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, stacked)


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.save_only_these_names(MATMUL_OUTPUT),  # the weight matmuls' outputs
}


class Transformer(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = jnp.dtype(cfg.dtype)
        pdt = jnp.dtype(cfg.param_dtype)
        std, _ = init_stds(cfg.init, cfg.init_std, cfg.d_model, cfg.n_layers)
        self.embed = param(rngs.params(), (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), std, pdt)
        self.pos_embed = (param(rngs.params(), (cfg.max_seq_len, cfg.d_model), ("length", "embed"), std, pdt)
                          if cfg.family == "gpt2" else None)
        self.embed_dropout = Dropout(cfg.embed_dropout)
        self.blocks = _stack_blocks(cfg, self.dtype, rngs)
        norm_kind = "layernorm" if cfg.family == "gpt2" else "rmsnorm"
        self.final_norm = Norm(cfg.d_model, "embed", kind=norm_kind, eps=cfg.norm_eps, param_dtype=pdt)
        self.unembed = (None if cfg.tie_embeddings else
                        param(rngs.params(), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), std, pdt))
        self.reward_head = (param(rngs.params(), (cfg.d_model,), ("embed",), cfg.d_model ** -0.5, pdt)
                            if cfg.reward_head else None)
        # PPO's critic: zero at the start, so the first advantages are the rewards' own (GAE on V = 0)
        self.value_head = param(rngs.params(), (cfg.d_model,), ("embed",), 0.0, pdt) if cfg.value_head else None
        self.value_bias = param(rngs.params(), (1,), ("value",), 0.0, pdt) if cfg.value_head else None

    def unembedding(self) -> jax.Array:
        """(embed, vocab) matrix in the compute dtype; the loss multiplies hidden states by it."""
        w = self.embed[...].T if self.unembed is None else self.unembed[...]
        return w.astype(self.dtype)

    def scores(self, h_BTD) -> jax.Array:
        """(B, T) float32 scalar scores of final-normed hidden states (model.reward_head)."""
        w = self.reward_head[...].astype(self.dtype)
        return jnp.einsum("btd,d->bt", h_BTD, w, preferred_element_type=jnp.float32)

    def values(self, h_BTD) -> jax.Array:
        """(B, T) float32 value estimates of final-normed hidden states (model.value_head)."""
        w = self.value_head[...].astype(self.dtype)
        v = jnp.einsum("btd,d->bt", h_BTD, w, preferred_element_type=jnp.float32)
        return v + self.value_bias[...].astype(jnp.float32)[0]

    def embed_inputs(self, tokens_BT, positions_BT, dropout_key=None):
        """The first layer's input (B, T, D) and one dropout key per layer (None without dropout)."""
        x = jnp.take(self.embed[...], tokens_BT, axis=0).astype(self.dtype)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions_BT, axis=0).astype(self.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        keys = None
        if dropout_key is not None:
            dropout_key, k_embed = jax.random.split(dropout_key)
            x = self.embed_dropout(x, k_embed)
            keys = jax.random.split(dropout_key, self.cfg.n_layers)
        return x, keys

    def layer_fn(self):
        """(stacked layer state, each leaf with a leading `layers` dim; layer(x, layer_state, positions,
        segment_ids, key, cache)): one block as a pure function, rematerialised as configured.
        `hidden` scans it over the layers; jaxlm.parallel.pipeline runs it in pipeline stages."""
        graphdef, stacked = nnx.split(self.blocks)

        def layer(x, layer_state, positions_BT, segment_ids_BT, key, layer_cache):
            block = nnx.merge(graphdef, layer_state)
            return block(x, positions_BT, segment_ids_BT, key, layer_cache)

        if self.cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=self.remat_policy())
        return stacked, layer

    def remat_policy(self):
        """The jax.checkpoint policy of model.remat (not for "none", which does not rematerialise)."""
        return _REMAT_POLICIES[self.cfg.remat]

    def hidden(self, tokens_BT, positions_BT, segment_ids_BT, dropout_key=None, cache=None):
        """Final-normed hidden states (B, T, D); with a KV cache also returns the updated cache."""
        x, keys = self.embed_inputs(tokens_BT, positions_BT, dropout_key)
        stacked, layer = self.layer_fn()
        pos, seg = positions_BT, segment_ids_BT

        if cache is None and self.cfg.scan_layers:
            def body(x, xs):
                layer_state, key = xs
                return layer(x, layer_state, pos, seg, key, None), None
            x, _ = jax.lax.scan(body, x, (stacked, keys))
        elif cache is None:
            for i in range(self.cfg.n_layers):
                x = layer(x, jax.tree.map(lambda a: a[i], stacked), pos, seg, None if keys is None else keys[i], None)
        else:
            def body(x, xs):
                layer_state, layer_cache = xs
                return layer(x, layer_state, pos, seg, None, layer_cache)
            x, cache = jax.lax.scan(body, x, (stacked, cache))
        x = self.final_norm(x)
        return x if cache is None else (x, cache)

    def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, dropout_key=None):
        """Logits (B, T, V) in float32. Training computes the loss from `hidden` without them."""
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones_like(tokens_BT)
        h = self.hidden(tokens_BT, positions_BT, segment_ids_BT, dropout_key)
        return jnp.einsum("btd,dv->btv", h, self.unembedding(), preferred_element_type=jnp.float32)

    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        """An empty KV cache for `length` positions, stacked over layers like the parameters."""
        cfg = self.cfg
        kv, h = cfg.n_kv_heads, cfg.head_dim
        dtype = dtype or self.dtype
        zeros = jnp.zeros((cfg.n_layers, batch, length, kv, h), dtype)
        return dict(k=zeros, v=zeros, segment_ids=jnp.zeros((cfg.n_layers, batch, length), jnp.int32),
                    index=jnp.zeros((cfg.n_layers,), jnp.int32))


def param_count(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
