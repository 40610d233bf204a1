"""Sharded training equals one device; gradient accumulation equals the large batch."""

import jax
import numpy as np
import pytest

from tests.helpers import run_steps, synthetic_batches, tiny_config


RTOL = 1e-5


def _max_rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_data_fsdp_tensor_mesh_matches_one_device(family):
    steps = 20
    one = tiny_config(family, mesh={"data": 1})
    mixed = tiny_config(family, mesh={"data": 2, "fsdp": 2, "tensor": 2})
    batches = list(synthetic_batches(steps, 1, 8, 16, 96))
    loss_1, norm_1, _ = run_steps(one, batches, devices=jax.devices()[:1])
    loss_8, norm_8, _ = run_steps(mixed, batches, devices=jax.devices()[:8])
    assert loss_1[-1] < loss_1[0]  # it trains at all
    assert _max_rel(loss_1, loss_8) <= RTOL
    assert _max_rel(norm_1, norm_8) <= RTOL
    # Parameters are not compared one by one: Adam turns gradients at rounding level (e.g. of
    # biases whose true gradient is ~0) into full-size steps, so such entries differ by design;
    # 20 matching losses and gradient norms pin the trajectory.


def test_accumulating_four_micro_batches_equals_the_large_batch():
    steps = 6
    large = tiny_config("llama", train={"global_batch": 16})
    accumulated = tiny_config("llama", train={"global_batch": 16, "micro_batch": 4})
    big = list(synthetic_batches(steps, 1, 16, 16, 96, seed=3))
    micro = [{k: v.reshape(4, 4, 16) for k, v in b.items()} for b in big]
    loss_big, norm_big, _ = run_steps(large, big, devices=jax.devices()[:1])
    loss_acc, norm_acc, _ = run_steps(accumulated, micro, devices=jax.devices()[:1])
    assert _max_rel(loss_big, loss_acc) <= RTOL
    assert _max_rel(norm_big, norm_acc) <= RTOL
