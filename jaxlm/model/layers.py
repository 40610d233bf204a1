"""Building blocks with logical axis names on every parameter.

Each parameter is an `nnx.Param` carrying `logical_axes`, a tuple naming each of its dims
(`embed`, `mlp`, `heads`, `kv`, `vocab`, `layers`). `jaxlm.parallel.rules` maps those names to mesh
axes; nothing here knows a mesh. Activations are named through `constrain`, which does nothing
outside a `naming_activations` block (the parallel layer's `activation_sharding`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

# ----------------------------------------------------------------------------------------------
# Activation names -> sharding constraints: set for a trace by `naming_activations` (which
# jaxlm.parallel.rules.activation_sharding enters with a mesh's mapping), identity otherwise.

_constraint: contextvars.ContextVar[Optional[Callable[[jax.Array, tuple], jax.Array]]] = \
    contextvars.ContextVar("jaxlm_activation_constraint", default=None)


@contextlib.contextmanager
def naming_activations(fn: Optional[Callable[[jax.Array, tuple], jax.Array]]):
    """While tracing inside this block, `constrain(x, axes)` is `fn(x, axes)`; the mapping before
    it is back afterwards (blocks nest: the innermost one holds)."""
    token = _constraint.set(fn)
    try:
        yield
    finally:
        _constraint.reset(token)


def activation_constraint() -> Optional[Callable[[jax.Array, tuple], jax.Array]]:
    """The mapping `constrain` uses now (None outside every naming block): what kernels that need
    each device's shard (splash attention) ask for its `per_shard` and `platform`."""
    return _constraint.get()


def constrain(x: jax.Array, axes: tuple) -> jax.Array:
    """Names the dims of an activation, e.g. constrain(x_BLD, ("batch", "length", "embed"))."""
    fn = _constraint.get()
    return x if fn is None else fn(x, axes)


# ----------------------------------------------------------------------------------------------
# Parameters


def param(key: jax.Array, shape: tuple, axes: tuple, std: float, dtype) -> nnx.Param:
    """A normal(0, std) parameter (std 0 gives zeros, std None gives ones) named by `axes`."""
    assert len(shape) == len(axes), (shape, axes)
    if std is None:
        value = jnp.ones(shape, dtype)
    elif std == 0.0:
        value = jnp.zeros(shape, dtype)
    else:
        value = std * jax.random.normal(key, shape, dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
    """y = x @ kernel (+ bias) in `dtype`, the product's operands in `matmul_dtype` (default: `dtype`)
    with float32 accumulation; `in_axes`/`out_axes` name the kernel's dims (may be several each).

    With `lora_rank` > 0 it also carries a low-rank adapter (LoRA): y += lora_scale * (x A) B, A
    (in..., rank) random and B (rank, out...) zero, so a fresh adapter leaves the layer as it was;
    `lora_dropout` drops the adapter's input when the call gets a key (training)."""

    def __init__(self, in_shape: tuple, out_shape: tuple, in_axes: tuple, out_axes: tuple, *,
                 std: float, use_bias: bool, dtype, param_dtype, rngs: nnx.Rngs, matmul_dtype=None,
                 lora_rank: int = 0, lora_scale: float = 1.0, lora_dropout: float = 0.0):
        key = rngs.params()
        self.kernel = param(key, in_shape + out_shape, in_axes + out_axes, std, param_dtype)
        self.bias = param(None, out_shape, out_axes, 0.0, param_dtype) if use_bias else None
        self.n_in = len(in_shape)
        self.dtype = jnp.dtype(dtype)
        self.matmul_dtype = jnp.dtype(matmul_dtype or dtype)
        # A's key derives from the kernel's, so the base weights are those of a model without
        # adapters; std 1/sqrt(fan_in) keeps x A of the order of x.
        self.lora_a = (param(jax.random.fold_in(key, 1), in_shape + (lora_rank,), in_axes + ("lora",),
                             1.0 / math.sqrt(math.prod(in_shape)), param_dtype) if lora_rank > 0 else None)
        self.lora_b = param(None, (lora_rank,) + out_shape, ("lora",) + out_axes, 0.0, param_dtype) if lora_rank > 0 else None
        self.lora_scale = lora_scale
        self.lora_dropout = Dropout(lora_dropout)

    def __call__(self, x: jax.Array, lora_key: Optional[jax.Array] = None) -> jax.Array:
        y = matmul(x, self.kernel[...], self.n_in, self.matmul_dtype)
        if self.lora_a is not None:
            h = matmul(self.lora_dropout(x, lora_key), self.lora_a[...], self.n_in, self.matmul_dtype)
            y = y + self.lora_scale * matmul(h, self.lora_b[...], 1, self.matmul_dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        # Named for remat's "dots" policy, which keeps these outputs by name: it sees them inside a
        # pipeline's vmapped stages and through the low-precision product's custom_vjp, where a
        # policy that looks for dot primitives without batch dims finds none.
        return checkpoint_name(y.astype(self.dtype), MATMUL_OUTPUT)


def lora_options(cfg, name: str) -> dict:
    """Dense's LoRA arguments for the layer called `name` (q, k, v, o, up, gate, down) under `cfg`."""
    lo = cfg.lora
    if lo.rank <= 0 or name not in lo.targets:
        return {}
    return dict(lora_rank=lo.rank, lora_scale=lo.scale, lora_dropout=lo.dropout)


def lora_keys(key: Optional[jax.Array], n: int) -> list:
    """n adapter-dropout keys from one (n Nones without a key)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


# ----------------------------------------------------------------------------------------------
# Matrix products

MATMUL_OUTPUT = "matmul_output"  # the checkpoint name of every Dense output


def matmul(x: jax.Array, w: jax.Array, n_contract: int, dtype) -> jax.Array:
    """x's last `n_contract` dims times w's first ones, operands in `dtype`, a float32 result.

    Below float32 the backward pass multiplies in `dtype` too (float32 accumulation). JAX's own
    transpose would meet the float32 cotangent with a `dtype` operand, and XLA then multiplies in
    float32: on an AMX CPU that is 3-6x slower than the bfloat16 products (see docs/benchmarks.md).
    XLA's CPU backend still runs the weight gradient in float32: its left operand is transposed,
    which the AMX path does not take.
    """
    if jnp.dtype(dtype) == jnp.float32:
        return _dot(x.astype(jnp.float32), w.astype(jnp.float32), n_contract)
    return _low_precision_matmul(x, w, n_contract, jnp.dtype(dtype))


def _dot(x, w, n_contract):
    dims = ((tuple(range(x.ndim - n_contract, x.ndim)), tuple(range(n_contract))), ((), ()))
    return jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _low_precision_matmul(x, w, n_contract, dtype):
    return _dot(x.astype(dtype), w.astype(dtype), n_contract)


def _low_precision_matmul_fwd(x, w, n_contract, dtype):
    x_low, w_low = x.astype(dtype), w.astype(dtype)
    # x as a (tokens, features) matrix: the weight gradient then contracts one dim of each operand.
    # With the token dims left apart, XLA's CPU backend transposes x in a fused elementwise loop
    # that ran ~10x slower than a copy (2 ms a layer on the Tiny Shakespeare step).
    x_NF = x_low.reshape(-1, math.prod(x.shape[x.ndim - n_contract:]))
    # Empty arrays carry the primal dtypes (residuals must be arrays) for the gradients' casts.
    like = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))
    return _dot(x_low, w_low, n_contract), (x_NF, w_low, like)


def _low_precision_matmul_bwd(n_contract, dtype, residuals, g):
    x_NF, w, (x_like, w_like) = residuals
    g = g.astype(dtype)
    n_out = w.ndim - n_contract
    out_dims = tuple(range(g.ndim - n_out, g.ndim)), tuple(range(n_contract, w.ndim))
    dx = jax.lax.dot_general(g, w, (out_dims, ((), ())), preferred_element_type=jnp.float32)
    g_NO = g.reshape(x_NF.shape[0], -1)
    dw = jax.lax.dot_general(x_NF, g_NO, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dx.astype(x_like.dtype), dw.reshape(w.shape).astype(w_like.dtype)


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


class Norm(nnx.Module):
    """LayerNorm (gpt2: scale and bias) or RMSNorm (llama: scale only), computed in float32."""

    def __init__(self, dim: int, axis_name: str, *, kind: str, eps: float, param_dtype):
        self.kind = kind
        self.eps = eps
        self.scale = param(None, (dim,), (axis_name,), None, param_dtype)
        self.bias = param(None, (dim,), (axis_name,), 0.0, param_dtype) if kind == "layernorm" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        x = x * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            x = x + self.bias[...].astype(jnp.float32)
        return x.astype(dtype)


class Dropout(nnx.Module):
    """Inverted dropout driven by an explicit key, so the step stays a pure function of its inputs."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, x: jax.Array, key: Optional[jax.Array]) -> jax.Array:
        if self.rate == 0.0 or key is None:
            return x
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Initialisation schemes


def init_stds(scheme: str, base_std: float, d_model: int, n_layers: int) -> tuple[float, float]:
    """(std of ordinary weights, std of the projections that write into the residual stream).

    normal: every weight N(0, base_std).
    gpt2:   residual-stream projections scaled by 1/sqrt(2 * n_layers) (GPT-2), since each layer
            adds two branches to the stream and its variance would otherwise grow with depth.
    small:  "small init" std = sqrt(2 / (5 d)) (Nguyen & Salazar 2019) for every weight, and the
            residual projections further scaled by 0.67 * n_layers^(-1/4) (T-Fixup) — keeps very
            deep stacks trainable without warm-up tricks.
    """
    if scheme == "normal":
        return base_std, base_std
    if scheme == "gpt2":
        return base_std, base_std / math.sqrt(2 * n_layers)
    if scheme == "small":
        std = math.sqrt(2.0 / (5.0 * d_model))
        return std, std * 0.67 * n_layers ** -0.25
    raise ValueError(f"unknown init scheme {scheme!r}")
