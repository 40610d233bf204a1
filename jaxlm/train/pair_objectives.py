"""Objectives over preference pairs: the reward model (Bradley-Terry) and the DPO family.

A micro-batch holds pairs as rows side by side (jaxlm.data.pairs): row 2i is pair i's chosen
sequence, row 2i+1 its rejected one, each a whole prompt + response from position 0 with
`loss_mask` on the final response's targets. A pair is real when its chosen row has a token (an
eval stream's last batch is padded with empty pairs); sums run over real pairs and the weight is
their count, so every metric is a mean per pair and accumulation equals the large batch.

  reward   a scalar head (model.reward_head) on the final hidden state at each sequence's last
           token: s = w . h_last; loss -log sigmoid(s_c - s_r - preference.margin); logs
           accuracy (s_c > s_r), score_margin, score_chosen, score_rejected.
  dpo/ipo  the policy's summed log-probabilities of the responses against a frozen reference's
           (the batch field `ref_logp`, summed over the length: computed before the step by
           jaxlm.train.reference, or read from the pair records), through
           jaxlm.train.preference's losses; ipo on per-token averages with preference.ipo_average.
  simpo    reference-free: length-normalised log-probabilities.
  With preference.rpo_alpha > 0 each of the three adds alpha times the chosen response's mean
  per-token negative log-likelihood to its pair's loss (RPO, Pang et al. 2024; TRL's rpo_alpha,
  which averages over the batch's chosen tokens instead of per pair).
The DPO family logs rewards_chosen / rewards_rejected (implicit rewards), reward_margin,
reward_accuracy, logp_chosen / logp_rejected. Importing this module registers the four names
(jaxlm.train.setup does).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxlm.config import Config
from jaxlm.data.pairs import REFERENCE_FIELD
from jaxlm.train import preference
from jaxlm.train.objective import TOKEN_FIELDS, Objective, Sums, register


def real_pairs(micro: dict):
    """(P,) float32: 1 for a real pair, 0 for an empty one (its chosen row has no token)."""
    return jnp.any(micro["segment_ids"][0::2] > 0, axis=-1).astype(jnp.float32)


def last_token_index(segment_ids_BT):
    """(B,) the position of each row's last real input token (0 for an empty row)."""
    t = segment_ids_BT.shape[-1]
    return jnp.max(jnp.where(segment_ids_BT > 0, jnp.arange(t), 0), axis=-1)


def last_token_scores(model, h_BTD, segment_ids_BT):
    """(B,) the scalar head (model.reward_head) on each row's last real input token: a reward
    model's score of the sequence in that row."""
    last = last_token_index(segment_ids_BT)
    return model.scores(jnp.take_along_axis(h_BTD, last[:, None, None], axis=1))[:, 0]


def token_logprobs(model, h_BTD, targets_BT, mask_BT):
    """(B, T) float32 log p(target) where the mask is set, 0 elsewhere."""
    logits = jnp.einsum("btd,dv->btv", h_BTD, model.unembedding(), preferred_element_type=jnp.float32)
    return preference.token_logprobs(logits, targets_BT, mask_BT)


def _sums(losses, weights, metrics: dict) -> Sums:
    total = jnp.sum(losses * weights)
    out = {"loss": total}
    out.update({name: jnp.sum(value * weights) for name, value in metrics.items()})
    return Sums(total, jnp.sum(weights), out)


class RewardModel(Objective):
    name = "reward"

    def __init__(self, config: Config):
        self.margin = config.preference.margin

    def loss(self, model, h_BTD, micro, *, train):
        scores = last_token_scores(model, h_BTD, micro["segment_ids"])
        chosen, rejected = scores[0::2], scores[1::2]
        losses = preference.bradley_terry_terms(chosen, rejected, margin=self.margin)
        return _sums(losses, real_pairs(micro), {
            "accuracy": (chosen > rejected).astype(jnp.float32), "score_margin": chosen - rejected,
            "score_chosen": chosen, "score_rejected": rejected})


class DirectPreference(Objective):
    """dpo, ipo or simpo over the policy's sequence log-probabilities."""

    float_fields = (REFERENCE_FIELD,)

    def __init__(self, config: Config, kind: str):
        self.name, self.p = kind, config.preference
        self.uses_reference = kind != "simpo"
        self.batch_fields = TOKEN_FIELDS + ((REFERENCE_FIELD,) if self.uses_reference else ())

    def loss(self, model, h_BTD, micro, *, train):
        mask = micro["loss_mask"]
        logp = jnp.sum(token_logprobs(model, h_BTD, micro["targets"], mask), axis=-1)
        counts = jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1), 1.0)  # an empty row: no division by 0
        pc, pr, lc, lr = logp[0::2], logp[1::2], counts[0::2], counts[1::2]
        p = self.p
        if self.name == "simpo":
            terms = preference.simpo_terms(pc, pr, lc, lr, beta=p.beta, gamma=p.gamma)
        else:
            ref = jnp.sum(micro[REFERENCE_FIELD].astype(jnp.float32), axis=-1)
            rc, rr = ref[0::2], ref[1::2]
            if self.name == "dpo":
                terms = preference.dpo_terms(pc, pr, rc, rr, beta=p.beta, label_smoothing=p.label_smoothing)
            elif p.ipo_average:
                terms = preference.ipo_terms(pc / lc, pr / lr, rc / lc, rr / lr, beta=p.beta)
            else:
                terms = preference.ipo_terms(pc, pr, rc, rr, beta=p.beta)
        losses, reward_c, reward_r = terms
        if p.rpo_alpha:  # RPO (Pang et al. 2024): the chosen response's mean per-token NLL added
            losses = losses + p.rpo_alpha * (-pc / lc)
        return _sums(losses, real_pairs(micro), {
            "rewards_chosen": reward_c, "rewards_rejected": reward_r, "reward_margin": reward_c - reward_r,
            "reward_accuracy": (reward_c > reward_r).astype(jnp.float32), "logp_chosen": pc, "logp_rejected": pr})


register("reward", RewardModel)
for _kind in ("dpo", "ipo", "simpo"):
    register(_kind, lambda config, kind=_kind: DirectPreference(config, kind))
