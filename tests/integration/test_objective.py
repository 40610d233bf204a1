"""Objectives plug into the one loop: a test-only objective (next-token loss on even positions
only) is what the step optimises, on one device and through the pipeline, and trains through the
unchanged loop with checkpoints, exact resume and loss-spike handling."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxlm.config import ConfigError, config_from_dict
from jaxlm.train import objective, setup
from jaxlm.train.incidents import read_incidents
from jaxlm.train.loop import Hook, train
from tests.helpers import losses, max_rel, run_config, synthetic_batches, tiny_config, train_on_mesh


class EveryOtherToken(objective.Objective):
    """The next-token loss on even positions only: another loss and another weight per batch."""

    name = "every_other_token"

    def __init__(self, config):
        self.next_token = objective.NextToken(config)

    def loss(self, model, h_BTD, micro, *, train):
        even = (micro["positions"] % 2 == 0).astype(micro["loss_mask"].dtype)
        return self.next_token.loss(model, h_BTD, {**micro, "loss_mask": micro["loss_mask"] * even}, train=train)


objective.register(EveryOtherToken.name, EveryOtherToken)


def _even_only(batch):
    return {**batch, "loss_mask": batch["loss_mask"] * (batch["positions"] % 2 == 0)}


@pytest.mark.slow  # ~25-60 s: one-device and pipelined training of the test objective
def test_the_step_optimises_the_configured_objective():
    """Training with the objective equals next-token training on batches masked the same way, bitwise
    on one device; through a 2-stage pipeline (which takes the objective as its head) within RTOL."""
    batches = list(synthetic_batches(4, 2, 8, 16, 96, seed=3))
    config = tiny_config("llama", train={"global_batch": 16, "micro_batch": 8, "objective": EveryOtherToken.name})
    one = jax.devices()[:1]
    mine = train_on_mesh(config, batches, devices=one)
    plain = dataclasses.replace(config, train=dataclasses.replace(config.train, objective="next_token"))
    masked = train_on_mesh(plain, [_even_only(b) for b in batches], devices=one)
    assert mine.losses.tolist() == masked.losses.tolist() and mine.grad_norms.tolist() == masked.grad_norms.tolist()
    unmasked = train_on_mesh(plain, batches, devices=one)
    assert not np.allclose(unmasked.losses[1:], mine.losses[1:])  # the objective changed what was learned

    piped = tiny_config("llama", mesh={"data": 4, "pipe": 2},
                        train={"global_batch": 16, "micro_batch": 8, "objective": EveryOtherToken.name})
    assert max_rel(mine.losses, train_on_mesh(piped, batches).losses) <= 1e-5


def test_an_unknown_objective_fails_before_compute():
    config = tiny_config("llama", mesh={"data": -1}, train={"objective": "next_tokens"})
    with pytest.raises(ConfigError, match=r"train.objective is 'next_tokens'; known objectives: .*next_token"):
        setup.build(config)


def _config(dataset, workdir, **sections):
    return config_from_dict(run_config(
        workdir, dataset, steps=16, every=4, train={"eval_every": 8, "objective": EveryOtherToken.name},
        checkpoint={"keep_last": 3, "handle_signals": False},
        spikes={"warmup_steps": 100}, **sections))  # only non-finite steps flag in a run this short


class _Crash(Exception):
    pass


def _crash(trainer, step):
    raise _Crash(step)


@pytest.mark.slow
def test_a_new_objective_trains_through_the_loop_with_checkpoints_resume_and_spike_handling(
        learnable_dataset, tmp_path):
    # Uninterrupted.
    whole = _config(learnable_dataset, tmp_path / "whole")
    summary = train(whole)
    reference = losses(tmp_path / "whole")
    assert sorted(k for k in reference if isinstance(k, int)) == list(range(1, 17))
    assert reference[16] < reference[1] - 0.5 and np.isfinite(summary["val_loss"])

    # Crashed after step 6 (last checkpoint: 4), then the same command again: bitwise the same run.
    cut = _config(learnable_dataset, tmp_path / "cut")
    with pytest.raises(_Crash):
        train(cut, [Hook("crash", 6, _crash)])
    train(cut)
    assert [i["step"] for i in read_incidents(str(tmp_path / "cut")) if i["kind"] == "restore"] == [4]
    assert losses(tmp_path / "cut") == reference

    # NaN gradients in steps 7..11: each step is skipped in the step, and as the flags persist the
    # run rolls back to checkpoint 4, skips the data it read since, and trains on to the end.
    spiky = _config(learnable_dataset, tmp_path / "spiky", faults=[{"kind": "nan", "step": 7, "steps": 5}])
    train(spiky)
    incidents = read_incidents(str(tmp_path / "spiky"))
    assert [i["step"] for i in incidents if i["kind"] == "skip"][:5] == [7, 8, 9, 10, 11]
    (rollback,) = [i for i in incidents if i["kind"] == "rollback"]
    assert rollback["to_step"] == 4
    after = losses(tmp_path / "spiky")
    assert max(k for k in after if isinstance(k, int)) == 16 and np.isfinite(after[16])
