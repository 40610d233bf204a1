"""Schedules, the weight-decay mask, the batch ramp, and each optimizer taking real steps."""

import jax
import numpy as np
import pytest

from jaxlm.config import OptimConfig, ScheduleConfig, TrainConfig, RampStage
from jaxlm.train.optimizer import BatchRamp, decay_mask, make_schedule
from tests.helpers import run_steps, synthetic_batches, tiny_config


def _lr(name, step, **kw):
    cfg = OptimConfig(lr=1.0, schedule=ScheduleConfig(name=name, warmup_steps=10, **kw))
    return float(make_schedule(cfg, total_steps=110)(step))


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "step", "inverse_sqrt", "wsd"])
def test_every_schedule_warms_up_linearly_to_the_peak(name):
    assert _lr(name, 0) == 0.0
    assert _lr(name, 5) == pytest.approx(0.5)
    assert _lr(name, 10) == pytest.approx(1.0)


def test_schedule_shapes_after_warmup():
    assert _lr("constant", 100) == pytest.approx(1.0)
    assert _lr("cosine", 60) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # half way down the cosine
    assert _lr("cosine", 110) == pytest.approx(0.1)
    assert _lr("linear", 110) == pytest.approx(0.1)
    assert _lr("step", 10 + 49, step_every=50, step_factor=0.5) == pytest.approx(1.0)
    assert _lr("step", 10 + 50, step_every=50, step_factor=0.5) == pytest.approx(0.5)
    assert _lr("inverse_sqrt", 30) == pytest.approx((10 / 30) ** 0.5)
    assert _lr("wsd", 89) == pytest.approx(1.0)  # stable until the last 20% of the 100 decay steps
    assert _lr("wsd", 110) == pytest.approx(0.1)


def test_weight_decay_spares_norms_and_biases():
    axes = {"w": ("layers", "embed", "mlp"), "scale": ("layers", "embed"), "bias": ("mlp",), "embed": ("vocab", "embed")}
    assert decay_mask(axes) == {"w": True, "scale": False, "bias": False, "embed": True}


def test_batch_ramp_by_tokens():
    ramp = BatchRamp(TrainConfig(global_batch=8, micro_batch=2,
                                 batch_ramp=[RampStage(until_tokens=100, batch=2), RampStage(until_tokens=300, batch=4)]),
                     seq_len=10)
    # 2*10 tokens per step until 100 (5 steps), 4*10 until 300 (5 more), then 8*10.
    assert [ramp.batch_at(s) for s in range(12)] == [2] * 5 + [4] * 5 + [8] * 2
    assert [ramp.micro_steps_at(s) for s in (0, 5, 10)] == [1, 2, 4]
    assert ramp.tokens_before(12) == 100 + 200 + 160


@pytest.mark.parametrize("name, lr", [("adamw", 1e-2), ("lion", 1e-3), ("adafactor", 1e-2)])
def test_optimizers_train(name, lr):
    config = tiny_config("gpt2", optim={"name": name, "lr": lr})
    losses, _, params = run_steps(config, synthetic_batches(15, 1, 8, 16, 96), devices=jax.devices()[:1])
    assert losses[-1] < losses[0] - 0.3
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
