"""Online RL: the rollout stage that makes an RL run's batches (rollout.py); the loss is the
policy_gradient objective in jaxlm.train, the loop the trainer's (docs/online_rl.md)."""

from jaxlm.rl.rollout import Rollouts

__all__ = ["Rollouts"]
