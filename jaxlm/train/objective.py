"""Objectives: the loss, and its metrics, over a micro-batch; what a training run optimises.

The step (step.py) runs the model's body over a micro-batch — embeddings, layers, final norm, in
one piece or through the pipeline — and hands the hidden states to the objective, which returns
sums: the `objective` it differentiates, the `weight` that the whole batch's sums are divided by,
and named metric sums (each logged as sum / weight). Summing and dividing once per batch makes
gradient accumulation equal to the large batch for every objective. The loop, the step,
checkpoints, spike handling (which watches the metric `loss`) and the logs are the same for all.

Next-token pre-training is `NextToken`. An objective for instruction tuning masks the loss to
response tokens through the batch's `loss_mask`; one over pairs (a reward model's Bradley-Terry
loss, DPO) reads rows as pairs from extra batch fields it names in `batch_fields`; one that needs
a frozen reference model's log-probabilities reads them from a batch field computed before the
step; extra heads are model parameters (with logical axes, so they shard and checkpoint like the
rest) that the objective reads through `model`. `train.objective` names the one a run uses; a new
one is registered with `register(name, factory)`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxlm.config import Config, ConfigError
from jaxlm.train.loss import cross_entropy_sums

# The fields every batch carries, each (rows, length) int32 per micro-batch (jaxlm.data.loader).
TOKEN_FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


class Sums(NamedTuple):
    """One micro-batch's contribution; the step adds them over micro-batches, then divides."""
    objective: jax.Array  # scalar float32: what the gradient is taken of
    weight: jax.Array  # scalar float32: the batch's sums are divided by the batch's total weight
    metrics: dict  # {name: scalar float32 sum}; "loss" is required (spike handling watches it)


class Objective:
    """The interface: `loss(model, h_BTD, micro, train=...) -> Sums`.

    model: the Transformer (its unembedding, heads); h_BTD: final-normed hidden states of the
    micro-batch's `inputs` (batch, length, embed) in the compute dtype; micro: the micro-batch's
    fields (`batch_fields`, each (batch, length)); train: False in evaluation (no regulariser).
    """

    name = "objective"
    batch_fields: tuple[str, ...] = TOKEN_FIELDS
    float_fields: tuple[str, ...] = ()  # those of batch_fields that hold float32 values (the rest int32)

    def loss(self, model, h_BTD: jax.Array, micro: dict, *, train: bool) -> Sums:
        raise NotImplementedError


class NextToken(Objective):
    """Cross-entropy of each next token where `loss_mask` is set (plus model.loss_chunk's chunking
    and train.z_loss), divided by the number of such tokens."""

    name = "next_token"

    def __init__(self, config: Config):
        self.chunk = config.model.loss_chunk
        self.z_weight = config.train.z_loss

    def loss(self, model, h_BTD, micro, *, train):
        d = h_BTD.shape[-1]
        objective, nll_sum = cross_entropy_sums(
            h_BTD.reshape(-1, d), model.unembedding(), micro["targets"].reshape(-1),
            micro["loss_mask"].reshape(-1), z_weight=self.z_weight if train else 0.0, chunk=self.chunk)
        return Sums(objective, jnp.sum(micro["loss_mask"].astype(jnp.float32)), {"loss": nll_sum})


_REGISTRY: dict[str, Callable[[Config], Objective]] = {"next_token": NextToken}


def register(name: str, factory: Callable[[Config], Objective]) -> None:
    """Makes `train.objective: <name>` build `factory(config)`."""
    _REGISTRY[name] = factory


def build(config: Config) -> Objective:
    """The objective `train.objective` names; ConfigError (listing the known ones) otherwise."""
    name = config.train.objective
    if name not in _REGISTRY:
        raise ConfigError(f"train.objective is {name!r}; known objectives: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](config)
