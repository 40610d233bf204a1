"""Building blocks with logical axis names on every parameter.

Each parameter is an `nnx.Param` carrying `logical_axes`, a tuple naming each of its dims
(`embed`, `mlp`, `heads`, `kv`, `vocab`, `layers`). `jaxlm.parallel.rules` maps those names to mesh
axes; nothing here knows a mesh. Activations are named through `constrain`, which does nothing
until the parallel layer installs a mapping with `set_activation_constraint`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

# ----------------------------------------------------------------------------------------------
# Activation names -> sharding constraints (installed by jaxlm.parallel, identity otherwise)

_constraint: Optional[Callable[[jax.Array, tuple], jax.Array]] = None


def set_activation_constraint(fn: Optional[Callable[[jax.Array, tuple], jax.Array]]) -> None:
    global _constraint
    _constraint = fn


def activation_constraint() -> Optional[Callable[[jax.Array, tuple], jax.Array]]:
    """The mapping installed now (None: none), so a caller can swap one in and put it back."""
    return _constraint


def constrain(x: jax.Array, axes: tuple) -> jax.Array:
    """Names the dims of an activation, e.g. constrain(x_BLD, ("batch", "length", "embed"))."""
    return x if _constraint is None else _constraint(x, axes)


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
    """y = x @ kernel (+ bias); `in_axes`/`out_axes` name the kernel's dims (may be several each)."""

    def __init__(self, in_shape: tuple, out_shape: tuple, in_axes: tuple, out_axes: tuple, *,
                 std: float, use_bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        self.kernel = param(rngs.params(), in_shape + out_shape, in_axes + out_axes, std, param_dtype)
        self.bias = param(None, out_shape, out_axes, 0.0, param_dtype) if use_bias else None
        self.n_in = len(in_shape)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        lhs = tuple(range(x.ndim - self.n_in, x.ndim))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel, ((lhs, tuple(range(self.n_in))), ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


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
