"""Online RL arithmetic: advantages from rewards, KL estimators, the clipped policy objective.

  grpo_advantages   Shao et al. 2024: per group of G responses to one prompt,
                    A_i = (r_i - mean(r)) / (std(r) + eps), std over the group with ddof=1 (as
                    TRL's torch.std); `scale=False` leaves A_i = r_i - mean(r) (Dr. GRPO).
  rloo_advantages   Ahmadian et al. 2024: A_i = r_i - mean of the other G-1 rewards.
  gae               Schulman et al. 2016: delta_t = r_t + gamma V_{t+1} - V_t (V after the last
                    step = 0), A_t = sum_l (gamma lambda)^l delta_{t+l}, returns = A + V.
  kl_k1, kl_k3      per-token estimators of KL(pi || ref) from samples of pi (Schulman 2020,
                    "Approximating KL divergence"): k1 = log pi - log ref (unbiased, can be
                    negative), k3 = exp(log ref - log pi) - (log ref - log pi) - 1 (unbiased,
                    never negative, lower variance; GRPO's penalty).
  clipped_objective PPO's per-token loss: -min(rho A, clip(rho, 1-eps, 1+eps) A), rho the
                    probability ratio of the current to the sampling policy.
  whiten            PPO's advantage normalisation over the response tokens of a batch:
                    (A - mean) / sqrt(var + 1e-8), population variance, over mask > 0.
  clipped_value_loss PPO's critic loss: 0.5 max((V - R)^2, (V_clip - R)^2), V_clip = old V +-
                    clip (OpenAI baselines' and TRL's form, with their 1/2).
  explained_variance 1 - Var(R - V) / Var(R) over mask > 0: 1 a perfect critic, 0 no better than
                    the mean return.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grpo_advantages(rewards_PG, *, scale: bool = True, eps: float = 1e-4):
    mean = jnp.mean(rewards_PG, axis=-1, keepdims=True)
    centred = rewards_PG - mean
    if not scale:
        return centred
    std = jnp.std(rewards_PG, axis=-1, keepdims=True, ddof=1)
    return centred / (std + eps)


def rloo_advantages(rewards_PG):
    g = rewards_PG.shape[-1]
    if g < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    others = (jnp.sum(rewards_PG, axis=-1, keepdims=True) - rewards_PG) / (g - 1)
    return rewards_PG - others


def gae(rewards_BT, values_BT, mask_BT, *, gamma: float = 1.0, lam: float = 0.95):
    """(advantages, returns), both (B, T); positions with mask 0 (after the response) get 0."""
    mask = mask_BT.astype(rewards_BT.dtype)
    next_values = jnp.concatenate([values_BT[:, 1:] * mask[:, 1:], jnp.zeros_like(values_BT[:, :1])], axis=1)
    deltas = (rewards_BT + gamma * next_values - values_BT) * mask

    def back(carry, x):
        delta, m = x
        adv = delta + gamma * lam * carry * m
        return adv, adv

    _, adv_TB = jax.lax.scan(back, jnp.zeros(rewards_BT.shape[0], rewards_BT.dtype),
                             (deltas.T, mask.T), reverse=True)
    adv = adv_TB.T * mask
    return adv, (adv + values_BT) * mask


def kl_k1(logp, ref_logp):
    return logp - ref_logp


def kl_k3(logp, ref_logp):
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def clipped_objective(logp, old_logp, advantages, *, clip_eps: float = 0.2):
    """(per-token loss, per-token clipped indicator) for PPO/GRPO's surrogate."""
    ratio = jnp.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return -jnp.minimum(unclipped, clipped), (clipped < unclipped).astype(jnp.float32)


def _masked_moments(x, mask):
    n = jnp.sum(mask)
    mean = jnp.sum(x * mask) / n
    return mean, jnp.sum(jnp.square(x - mean) * mask) / n


def whiten(x, mask, *, eps: float = 1e-8):
    mask = mask.astype(x.dtype)
    mean, var = _masked_moments(x, mask)
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask


def clipped_value_loss(values, old_values, returns, *, clip: float):
    """(per-token loss, per-token indicator that the clip bit: V left old_V +- clip and the clipped
    error was the larger; inside the range the two errors are equal but for rounding)."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    plain, far = jnp.square(values - returns), jnp.square(clipped - returns)
    bit = (far > plain) & (jnp.abs(values - old_values) > clip)
    return 0.5 * jnp.maximum(plain, far), bit.astype(jnp.float32)


def explained_variance(values, returns, mask):
    mask = mask.astype(returns.dtype)
    _, var_returns = _masked_moments(returns, mask)
    _, var_error = _masked_moments(returns - values, mask)
    return 1.0 - var_error / var_returns
