"""The online-RL objective (train.objective: policy_gradient): a clipped policy-gradient loss with a
KL penalty to a frozen reference, over responses a rollout stage generated (jaxlm.rl).

A batch row is one response after its prompt, laid out as for instruction tuning: `loss_mask` marks
the response's tokens (and its end-of-turn token). Beside the token fields the rollout gives, per
token (0 off the mask):
  advantages  the response's advantage (GRPO or RLOO, jaxlm.train.advantages), the same on all its tokens
  old_logp    log pi_old(token): the sampling policy's log-probability
  ref_logp    log pi_ref(token): the frozen reference's

Per response token t, with logp the policy's log-probability now (jaxlm.train.advantages):
  loss_t = clipped_objective(logp, old_logp, A)  +  kl_coef * kl(logp, ref_logp)
and the batch's loss is the sum over every response token divided by their count (each token weighs
the same, as in DAPO and TRL's GRPO default; a long response is not diluted per sequence). The
penalty is in the loss, as GRPO puts it (not subtracted from the reward as PPO-RLHF does).
Metrics, each per response token: loss, pg_loss, kl (the chosen estimator), kl_k1 and kl_k3 (both,
for the report), entropy of the policy's next-token distribution, clip_fraction (tokens where the
clipped term was taken), ratio.

PPO (rl.algorithm: ppo) differs in three ways: `advantages` are per token (GAE over the value head's
estimates, whitened; jaxlm.rl.rollout), the KL penalty is already in the rewards those advantages
came from (so it is not in the loss), and the loss adds the value head's clipped regression to the
returns, per token:
  loss_t = clipped_objective(logp, old_logp, A_t)  +  vf_coef * clipped_value_loss(V, old_V, R_t)
with two more fields, old_values (the value head's estimates at sampling) and returns (A_t + old_V
before whitening), and two more metrics, value_loss and value_clip_fraction (tokens where the
clipped value error was the larger).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.config import Config
from jaxlm.train import advantages as adv_lib
from jaxlm.train.objective import TOKEN_FIELDS, Objective, Sums, register

FLOAT_FIELDS = ("advantages", "old_logp", "ref_logp")
VALUE_FIELDS = ("old_values", "returns")  # ppo's
ESTIMATORS = {"k1": adv_lib.kl_k1, "k3": adv_lib.kl_k3}


def token_logprobs(model, h_BTD, targets_BT):
    """(log p of every next-token distribution (B, T, V), log p(target) (B, T)), float32."""
    logits_BTV = jnp.einsum("btd,dv->btv", h_BTD, model.unembedding(), preferred_element_type=jnp.float32)
    logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    return logp_BTV, jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]


class PolicyGradient(Objective):
    name = "policy_gradient"
    batch_fields = TOKEN_FIELDS + FLOAT_FIELDS
    float_fields = FLOAT_FIELDS

    def __init__(self, config: Config):
        r = config.rl
        self.kl_coef, self.clip = r.kl_coef, r.clip
        self.kl = ESTIMATORS[r.kl_estimator]
        self.ppo = r.algorithm == "ppo"
        if self.ppo:
            self.batch_fields = self.batch_fields + VALUE_FIELDS
            self.float_fields = self.float_fields + VALUE_FIELDS
            self.vf_coef, self.value_clip = r.vf_coef, r.value_clip

    def loss(self, model, h_BTD, micro, *, train):
        logp_BTV, logp_BT = token_logprobs(model, h_BTD, micro["targets"])
        mask = micro["loss_mask"].astype(jnp.float32)
        old, ref = micro["old_logp"], micro["ref_logp"]
        pg, clipped = adv_lib.clipped_objective(logp_BT, old, micro["advantages"], clip_eps=self.clip)
        kl = self.kl(logp_BT, ref)
        if self.ppo:  # the KL is in the rewards; the critic's loss joins the policy's
            value_loss, value_clipped = adv_lib.clipped_value_loss(
                model.values(h_BTD), micro["old_values"], micro["returns"], clip=self.value_clip)
            per_token = pg + self.vf_coef * value_loss
        else:
            per_token = pg + self.kl_coef * kl
        entropy = -jnp.sum(jnp.exp(logp_BTV) * logp_BTV, axis=-1)

        def total(x):
            return jnp.sum(jnp.where(mask > 0, x, 0.0))  # where, not *: a masked-out inf/nan stays out

        objective = total(per_token)
        stopped = jax.lax.stop_gradient
        metrics = {
            "loss": stopped(objective), "pg_loss": stopped(total(pg)), "kl": stopped(total(kl)),
            "kl_k1": stopped(total(adv_lib.kl_k1(logp_BT, ref))), "kl_k3": stopped(total(adv_lib.kl_k3(logp_BT, ref))),
            "entropy": stopped(total(entropy)), "clip_fraction": total(clipped),
            "ratio": stopped(total(jnp.exp(logp_BT - old)))}
        if self.ppo:
            metrics.update(value_loss=stopped(total(value_loss)), value_clip_fraction=total(value_clipped))
        return Sums(objective, jnp.sum(mask), metrics)


register(PolicyGradient.name, PolicyGradient)
