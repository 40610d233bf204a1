"""Splash attention (the Pallas TPU kernel, run by Pallas' interpreter on CPU) against the dense
reference: same outputs and gradients in float32, with several documents packed in a row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ConfigError, MeshConfig, ModelConfig, config_from_dict
from jaxlm.model import Transformer, attention
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import build_mesh

T = 256  # two 128-token kernel tiles


def _model(impl: str, heads: int = 2, kv_heads: int = 1) -> Transformer:
    cfg = ModelConfig(family="llama", vocab_size=64, d_model=16 * heads, n_layers=2, n_heads=heads, n_kv_heads=kv_heads,
                      max_seq_len=T, attention=impl)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def _batch():
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, 64)
    # documents of 100, 60 and 96 tokens in row 0; 200 and 56 in row 1 (boundaries inside tiles)
    lengths = [[100, 60, 96], [200, 56]]
    segments = np.concatenate([[np.repeat(np.arange(1, len(r) + 1), r)] for r in lengths])
    positions = np.concatenate([[np.concatenate([np.arange(n) for n in r])] for r in lengths])
    return tokens, jnp.asarray(positions), jnp.asarray(segments)


def _loss_and_grads(model: Transformer, batch):
    graphdef, params = nnx.split(model, nnx.Param)
    tokens, positions, segments = batch

    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens, positions, segments)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0] * jnp.cos(logits[..., 1])), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads


def _assert_same(a, b):
    value_a, logits_a, grads_a = a
    value_b, logits_b, grads_b = b
    np.testing.assert_allclose(logits_a, logits_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value_a, value_b, rtol=1e-5, atol=1e-6)
    for (path, ga), gb in zip(jax.tree_util.tree_flatten_with_path(grads_a)[0], jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_splash_equals_dense_attention_with_packed_documents():
    batch = _batch()
    dense = _loss_and_grads(_model("dense"), batch)
    _assert_same(_loss_and_grads(_model("splash"), batch), dense)
    # The reference itself keeps documents apart: editing row 0's first document leaves the rest.
    tokens, positions, segments = batch
    edited = (tokens.at[0, :100].set(7), positions, segments)
    logits = jax.jit(_model("dense"))(*batch)
    np.testing.assert_allclose(jax.jit(_model("dense"))(*edited)[0, 100:], logits[0, 100:], rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # ~40 s of Pallas interpretation on a loaded 2-core machine
def test_sharded_splash_equals_dense_attention():
    batch = _batch()
    dense = _loss_and_grads(_model("dense", 4, 2), batch)
    # Sharded: rows over data x fsdp, kv heads over tensor, the kernel run per device (shard_map).
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    with rules.activation_sharding(mesh):
        _assert_same(_loss_and_grads(_model("splash", 4, 2), batch), dense)


def test_auto_picks_splash_only_for_tpu_and_whole_tiles():
    assert attention.target_platform() == "cpu"
    assert not attention.use_splash("auto", T, dropout=False)  # CPU: the dense einsums
    assert attention.use_splash("splash", T, dropout=False)
    assert not attention.use_splash("dense", T, dropout=False)
    with pytest.raises(ValueError, match="multiple of 128"):
        attention.use_splash("splash", 100, dropout=False)


def test_attention_config_key_is_checked():
    base = {"data": {"sources": [{"path": "d"}]}}
    assert config_from_dict(base).model.attention == "auto"
    with pytest.raises(ConfigError, match="model.attention is 'flash'; choose one of auto, dense, splash"):
        config_from_dict(base, ["model.attention=flash"])
