"""A frozen reference model's log-probabilities, computed before each step (DPO, IPO).

The reference is the model the run starts from: its parameters at step 0 (init.from / init.hf,
with LoRA adapters as they start, which leave the model unchanged). They sit on the run's mesh with
the policy's shardings, are never updated and never saved: the config names them, so a resumed
run rebuilds them (jaxlm.train.loop). `add(batch)` puts the batch field `ref_logp` beside the
loader's fields: per-token log p_ref(target) on the loss-mask positions, 0 elsewhere, (n_micro,
rows, length) float32 sharded like the batch. Objectives sum it over the length, as they sum a
pair record's cached total (jaxlm.data.pairs).
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxlm.data.pairs import REFERENCE_FIELD
from jaxlm.parallel import rules
from jaxlm.train.pair_objectives import token_logprobs


def make_logprobs_fn(spec):
    """(params, micro-batch of (rows, length) fields) -> (rows, length) float32 masked target log-probabilities."""
    def logprobs(params, micro):
        model = nnx.merge(spec.graphdef, params)
        h_BTD = model.hidden(micro["inputs"], micro["positions"], micro["segment_ids"])
        return token_logprobs(model, h_BTD, micro["targets"], micro["loss_mask"])
    return logprobs


class Reference:
    """Frozen parameters and the compiled function that scores a batch with them."""

    FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")

    def __init__(self, setup, params: dict):
        self.params = params  # already placed with setup.shardings["params"]
        one = make_logprobs_fn(setup.spec)

        def all_micro(p, batch):  # (n_micro, rows, length): one micro-batch at a time, as the step runs them
            return jax.lax.map(lambda micro: one(p, micro), batch)

        params_sharding = setup.shardings["params"]
        self._step = jax.jit(rules.sharded_activations(all_micro, setup.mesh),
                             in_shardings=(params_sharding, {k: setup.batch_sharding for k in self.FIELDS}),
                             out_shardings=setup.batch_sharding)
        self._micro = jax.jit(rules.sharded_activations(one, setup.mesh),
                              in_shardings=(params_sharding, {k: setup.micro_sharding for k in self.FIELDS}),
                              out_shardings=setup.micro_sharding)

    def add(self, batch: dict, leading: int = 1) -> dict:
        """`batch` (global arrays; leading=0: one micro-batch) with its `ref_logp` field."""
        fn = self._step if leading else self._micro
        return {**batch, REFERENCE_FIELD: fn(self.params, {k: batch[k] for k in self.FIELDS})}
