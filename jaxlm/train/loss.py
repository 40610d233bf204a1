"""Cross-entropy over the vocabulary, optionally in chunks that never hold all the logits.

With a large vocabulary the (tokens, vocab) logits dominate memory and time. `chunk > 0` walks
the tokens in chunks; under differentiation the forward pass of each chunk also produces that
chunk's gradients (softmax minus one-hot, times h and W), so the backward pass is a scale of
saved gradients and the logits are computed once — three matmuls per chunk in all, as for the
plain version, but each on cache-sized data.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _chunk_stats(h_CD, w_DV, targets_C, mask_C):
    """Per-token log-normaliser and masked NLL for one chunk, in float32."""
    logits = jnp.dot(h_CD, w_DV, preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # A compare-and-select fuses into the pass over the logits; a gather would not.
    is_target = jnp.arange(logits.shape[-1])[None, :] == targets_C[:, None]
    target_logit = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
    return logits, lse, (lse - target_logit) * mask_C, is_target


def cross_entropy_sums(h_ND, w_DV, targets_N, mask_N, *, z_weight: float = 0.0, chunk: int = 0):
    """Returns (objective, nll_sum): objective = sum of masked NLL + z_weight * sum of masked lse^2.

    Only `objective` may be differentiated; `nll_sum` is for logging. `h_ND` are final hidden
    states, `w_DV` the unembedding, both in the compute dtype; sums are float32.
    """
    mask_N = mask_N.astype(jnp.float32)
    if chunk <= 0 or chunk >= h_ND.shape[0]:
        _, lse, nll, _ = _chunk_stats(h_ND, w_DV, targets_N, mask_N)
        nll_sum = jnp.sum(nll)
        return nll_sum + z_weight * jnp.sum(jnp.square(lse) * mask_N), jax.lax.stop_gradient(nll_sum)
    return _fused(h_ND, w_DV, targets_N, mask_N, z_weight, chunk)


def _pad_to_chunks(x, chunk):
    n = x.shape[0]
    pad = -n % chunk
    if pad:
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


def _fused_forward(h_ND, w_DV, targets_N, mask_N, z_weight, chunk):
    n = h_ND.shape[0]
    hs, ts, ms = (_pad_to_chunks(a, chunk) for a in (h_ND, targets_N, mask_N))  # padded rows have mask 0

    def body(dw_DV, xs):
        h_CD, t_C, m_C = xs
        logits, lse, nll, is_target = _chunk_stats(h_CD, w_DV, t_C, m_C)
        # d(objective)/d(logits) = (softmax - onehot) * mask + z_weight * 2 * lse * softmax * mask
        coef = m_C * (1.0 + 2.0 * z_weight * lse)
        dlogits = jnp.exp(logits - lse[:, None]) * coef[:, None] - jnp.where(is_target, m_C[:, None], 0.0)
        dlogits = dlogits.astype(h_CD.dtype)
        dh_CD = jnp.dot(dlogits, w_DV.T, preferred_element_type=jnp.float32)
        dw_DV = dw_DV + jnp.dot(h_CD.T, dlogits, preferred_element_type=jnp.float32)
        sums = jnp.stack([jnp.sum(nll), jnp.sum(jnp.square(lse) * m_C)])
        return dw_DV, (sums, dh_CD)

    dw, (sums, dh) = jax.lax.scan(body, jnp.zeros(w_DV.shape, jnp.float32), (hs, ts, ms))
    nll_sum, z_sum = jnp.sum(sums[:, 0]), jnp.sum(sums[:, 1])
    dh = dh.reshape(-1, h_ND.shape[1])[:n]
    return (nll_sum + z_weight * z_sum, nll_sum), (dh, dw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(h_ND, w_DV, targets_N, mask_N, z_weight, chunk):
    return _fused_forward(h_ND, w_DV, targets_N, mask_N, z_weight, chunk)[0]


def _fused_fwd(h_ND, w_DV, targets_N, mask_N, z_weight, chunk):
    out, (dh, dw) = _fused_forward(h_ND, w_DV, targets_N, mask_N, z_weight, chunk)
    # Empty arrays carry the primal dtypes (residuals must be arrays) for the cotangents' casts.
    return out, (dh, dw, jnp.zeros((0,), h_ND.dtype), jnp.zeros((0,), w_DV.dtype), targets_N, mask_N)


def _fused_bwd(z_weight, chunk, res, cotangents):
    dh, dw, h_like, w_like, targets_N, mask_N = res
    g = cotangents[0]  # the nll_sum output is for logging; its cotangent is ignored
    no_grad_targets = np.zeros(targets_N.shape, jax.dtypes.float0)
    return (g * dh).astype(h_like.dtype), (g * dw).astype(w_like.dtype), no_grad_targets, jnp.zeros_like(mask_N)


_fused.defvjp(_fused_fwd, _fused_bwd)
