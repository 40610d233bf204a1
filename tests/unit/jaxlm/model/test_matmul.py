"""Dense products: operands in model.matmul_dtype with float32 accumulation, and remat "dots"
keeping the products' outputs by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ConfigError, ModelConfig, config_from_dict
from jaxlm.model import Transformer
from jaxlm.model.layers import matmul


def _operands(n_contract):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (3, 8) + (4,) * n_contract)  # (batch, length, in...)
    w = jax.random.normal(keys[1], (4,) * n_contract + (5, 6))  # (in..., out...)
    g = jax.random.normal(keys[2], (3, 8, 5, 6))
    return x, w, g


def _rounded(a, dtype):
    return a.astype(dtype).astype(jnp.float32)


def _reference(x, w, n_contract):
    """JAX's own float32 product."""
    dims = ((tuple(range(x.ndim - n_contract, x.ndim)), tuple(range(n_contract))), ((), ()))
    return jax.lax.dot_general(x, w, dims, precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("n_contract", [1, 2])
def test_low_precision_product_and_its_gradients_match_rounded_float32(n_contract):
    x, w, g = _operands(n_contract)
    y, vjp = jax.vjp(lambda x, w: matmul(x, w, n_contract, jnp.bfloat16), x, w)
    # the float32 product of bf16-rounded operands, differentiated at a bf16-rounded cotangent
    bf = jnp.bfloat16
    y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, n_contract), _rounded(x, bf), _rounded(w, bf))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)  # bf16 products are exact in f32
    # the backward pass rounds the cotangent to bf16 too: compare with a bf16-rounded cotangent
    dx, dw = vjp(g)
    dx_ref, dw_ref = vjp_ref(_rounded(g, bf))
    assert dx.dtype == x.dtype and dw.dtype == w.dtype and dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)
    # and differs from the unrounded product by bf16 rounding, not by a wrong formula
    exact = _reference(x, w, n_contract)
    np.testing.assert_allclose(y, exact, rtol=0.05, atol=0.1)
    assert not np.allclose(y, exact, rtol=1e-5, atol=1e-5)


def test_float32_product_is_the_plain_one():
    x, w, _ = _operands(1)
    np.testing.assert_array_equal(matmul(x, w, 1, jnp.float32), jnp.einsum("bti,ioz->btoz", x, w))


def _grad_jaxpr(**model_kw):
    cfg = ModelConfig(family="gpt2", vocab_size=32, d_model=16, n_layers=2, n_heads=2, max_seq_len=8, **model_kw)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    tokens = jnp.arange(16).reshape(2, 8) % 32
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens) ** 2)
    return str(jax.make_jaxpr(jax.grad(loss))(params))


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_remat_dots_keeps_the_products_instead_of_recomputing_them(matmul_dtype):
    # "dots" recomputes only attention's two batched products (scores, weighted values); "full"
    # recomputes the weight products too. Without the names, the bf16 product's custom_vjp hid
    # its dot from the policy, and "dots" recomputed like "full".
    dots = {remat: _grad_jaxpr(remat=remat, matmul_dtype=matmul_dtype).count("dot_general")
            for remat in ("none", "dots", "full")}
    assert dots["dots"] == dots["none"] + 2
    assert dots["full"] > dots["dots"]


def test_matmul_dtype_is_validated():
    with pytest.raises(ConfigError, match="model.matmul_dtype is 'int8'; choose one of None, float32, bfloat16"):
        config_from_dict({"model": {"matmul_dtype": "int8"}})
    assert config_from_dict({"model": {"matmul_dtype": "bfloat16"}}).model.matmul_dtype == "bfloat16"
