"""Model families, layer scan, logical axis names and their rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.model import Transformer, param_count
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import build_mesh
from jaxlm.config import MeshConfig


def _cfg(**kw):
    base = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_scan_and_unrolled_layers_agree(family):
    tokens = jnp.arange(16).reshape(2, 8) % 64
    scanned = Transformer(_cfg(family=family), rngs=nnx.Rngs(0))
    unrolled = Transformer(_cfg(family=family, scan_layers=False), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(scanned(tokens), unrolled(tokens), rtol=1e-5, atol=1e-5)


def test_families_differ_in_the_expected_parameters():
    gpt2 = nnx.state(Transformer(_cfg(family="gpt2"), rngs=nnx.Rngs(0)), nnx.Param)
    llama = nnx.state(Transformer(_cfg(family="llama", n_kv_heads=2), rngs=nnx.Rngs(0)), nnx.Param)
    assert "pos_embed" in gpt2 and "pos_embed" not in llama
    assert gpt2["blocks"]["attn"]["q"]["bias"] is not None
    assert "gate" in llama["blocks"]["mlp"]
    assert llama["blocks"]["attn"]["k"]["kernel"].shape == (3, 32, 2, 8)  # (layers, embed, kv heads, head)


def test_segment_ids_stop_attention_across_documents():
    model = Transformer(_cfg(family="llama"), rngs=nnx.Rngs(1))
    tokens = jnp.array([[5, 6, 7, 8, 9, 10, 11, 12]])
    segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2]])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3]])
    packed = model(tokens, positions, segments)
    alone = model(tokens[:, 4:], positions[:, 4:], segments[:, 4:])
    np.testing.assert_allclose(packed[:, 4:], alone, rtol=1e-5, atol=1e-5)
    changed = model(tokens.at[0, 0].set(40), positions, segments)  # editing document 1 ...
    np.testing.assert_allclose(changed[:, 4:], packed[:, 4:], rtol=1e-6, atol=1e-6)  # ... leaves 2 alone


def test_every_parameter_has_a_rule_and_a_missing_rule_fails():
    model = Transformer(_cfg(family="llama"), rngs=nnx.Rngs(0))
    axes = rules.logical_axes(model)
    shapes = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    rules.param_shardings(axes, shapes, mesh)  # every name has a rule
    axes["embed"] = ("vocab", "no_such_axis")
    with pytest.raises(rules.ShardingRuleError, match="no_such_axis"):
        rules.param_shardings(axes, shapes, mesh)


def test_a_parameter_without_logical_names_is_refused():
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))
    model.extra = nnx.Param(jnp.zeros((4, 4)))
    with pytest.raises(rules.ShardingRuleError, match="no logical axis names"):
        rules.logical_axes(model)


def test_init_schemes_scale_residual_projections():
    def std(init):
        m = Transformer(_cfg(init=init, n_layers=8), rngs=nnx.Rngs(0))
        return float(jnp.std(m.blocks.attn.o.kernel[...])), float(jnp.std(m.blocks.attn.q.kernel[...]))
    o_normal, q_normal = std("normal")
    o_gpt2, q_gpt2 = std("gpt2")
    o_small, q_small = std("small")
    assert abs(q_normal - 0.02) < 2e-3 and abs(q_gpt2 - 0.02) < 2e-3
    assert abs(o_gpt2 - 0.02 / 4.0) < 1e-3  # 1/sqrt(2 * 8 layers)
    assert abs(q_small - (2 / (5 * 32)) ** 0.5) < 0.01
    assert o_small < q_small
    assert param_count(Transformer(_cfg(), rngs=nnx.Rngs(0))) > 0
