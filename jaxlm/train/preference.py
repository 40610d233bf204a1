"""Preference losses over sequence log-probabilities: small named functions, as objectives use them.

Inputs are per pair (shape (P,)): the policy's summed log-probability of the chosen and of the
rejected response given the prompt (`pi_chosen`, `pi_rejected`), the frozen reference model's
(`ref_chosen`, `ref_rejected`), and for length-normalised losses the response token counts.
Every function returns (mean loss over pairs, metrics), metrics being arrays to log; its `_terms`
form returns the per-pair (loss, implicit reward of chosen, of rejected) that the pair objectives
(jaxlm/train/pair_objectives.py) sum over a batch's real pairs:

  dpo     Rafailov et al. 2023, eq. 7: h = beta * [(pi_c - ref_c) - (pi_r - ref_r)],
          loss = -log sigmoid(h) (label smoothing e: -(1-e) log sigmoid(h) - e log sigmoid(-h),
          the conservative DPO of TRL's `label_smoothing`); beta scales the implicit reward
          r(y) = beta * (log pi(y) - log ref(y)), as in TRL's "sigmoid" loss.
  ipo     Azar et al. 2023, eq. 17: loss = (h' - 1/(2 tau))^2 with h' the same log-ratio
          difference unscaled and tau = beta. Log-probabilities as given: pass per-token
          averages (as TRL does for IPO) or sums (as the paper writes it).
  simpo   Meng et al. 2024, reference-free: loss = -log sigmoid(beta * (pi_c / |y_c| - pi_r / |y_r|) - gamma).

Metrics: rewards_chosen / rewards_rejected (implicit rewards; for SimPO the length-normalised
scaled log-probabilities), reward_margin, reward_accuracy (share of pairs whose chosen reward is
higher), logp_chosen / logp_rejected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _metrics(reward_c, reward_r, pi_c, pi_r) -> dict:
    return {"rewards_chosen": jnp.mean(reward_c), "rewards_rejected": jnp.mean(reward_r),
            "reward_margin": jnp.mean(reward_c - reward_r),
            "reward_accuracy": jnp.mean((reward_c > reward_r).astype(jnp.float32)),
            "logp_chosen": jnp.mean(pi_c), "logp_rejected": jnp.mean(pi_r)}


def dpo_terms(pi_chosen, pi_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1,
              label_smoothing: float = 0.0):
    """Per pair: (loss, implicit reward of chosen, of rejected); `dpo` is their mean."""
    chosen_ratio, rejected_ratio = pi_chosen - ref_chosen, pi_rejected - ref_rejected
    h = beta * (chosen_ratio - rejected_ratio)
    losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)
    return (losses, beta * jax.lax.stop_gradient(chosen_ratio), beta * jax.lax.stop_gradient(rejected_ratio))


def ipo_terms(pi_chosen, pi_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1):
    chosen_ratio, rejected_ratio = pi_chosen - ref_chosen, pi_rejected - ref_rejected
    losses = jnp.square(chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta))
    return (losses, beta * jax.lax.stop_gradient(chosen_ratio), beta * jax.lax.stop_gradient(rejected_ratio))


def simpo_terms(pi_chosen, pi_rejected, len_chosen, len_rejected, *, beta: float = 2.0, gamma: float = 0.5):
    reward_c = beta * pi_chosen / len_chosen
    reward_r = beta * pi_rejected / len_rejected
    losses = -jax.nn.log_sigmoid(reward_c - reward_r - gamma)
    return losses, jax.lax.stop_gradient(reward_c), jax.lax.stop_gradient(reward_r)


def _mean(terms, pi_chosen, pi_rejected):
    losses, reward_c, reward_r = terms
    return jnp.mean(losses), _metrics(reward_c, reward_r, pi_chosen, pi_rejected)


def dpo(pi_chosen, pi_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1, label_smoothing: float = 0.0):
    return _mean(dpo_terms(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=beta,
                           label_smoothing=label_smoothing), pi_chosen, pi_rejected)


def ipo(pi_chosen, pi_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1):
    return _mean(ipo_terms(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=beta), pi_chosen, pi_rejected)


def simpo(pi_chosen, pi_rejected, len_chosen, len_rejected, *, beta: float = 2.0, gamma: float = 0.5):
    return _mean(simpo_terms(pi_chosen, pi_rejected, len_chosen, len_rejected, beta=beta, gamma=gamma),
                 pi_chosen, pi_rejected)


def bradley_terry_terms(score_chosen, score_rejected, *, margin=0.0):
    """Per pair: the reward model's loss -log sigmoid(s_c - s_r - margin)."""
    return -jax.nn.log_sigmoid(score_chosen - score_rejected - margin)


def bradley_terry(score_chosen, score_rejected, *, margin=0.0):
    """Reward-model loss: -log sigmoid(s_c - s_r - margin) (margin per pair or scalar; 0 = plain
    Bradley-Terry, as TRL's RewardTrainer with an optional margin); accuracy = s_c > s_r."""
    losses = bradley_terry_terms(score_chosen, score_rejected, margin=margin)
    return jnp.mean(losses), {"accuracy": jnp.mean((score_chosen > score_rejected).astype(jnp.float32)),
                              "score_margin": jnp.mean(score_chosen - score_rejected),
                              "score_chosen": jnp.mean(score_chosen), "score_rejected": jnp.mean(score_rejected)}


LOSSES = {"dpo": dpo, "ipo": ipo, "simpo": simpo}


def token_logprobs(logits_BTV, targets_BT, mask_BT):
    """(B, T) float32 log p(target) at the masked (response) positions, 0 elsewhere."""
    logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    token = jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
    return token * mask_BT.astype(jnp.float32)


def sequence_logprobs(logits_BTV, targets_BT, mask_BT):
    """(B,) summed log p(target) over the masked (response) positions, and (B,) their counts."""
    return (jnp.sum(token_logprobs(logits_BTV, targets_BT, mask_BT), axis=-1),
            jnp.sum(mask_BT.astype(jnp.float32), axis=-1))
