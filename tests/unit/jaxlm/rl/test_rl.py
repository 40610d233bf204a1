"""Online RL (GRPO/RLOO): advantages, token rows and the policy-gradient loss against hand and numpy
computations; rollouts bitwise reproducible from their seed; a run through the trainer core with
its records, and a resumed run equal to the uninterrupted one."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlm.config import ConfigError, config_from_dict, load_config
from jaxlm.interop import warm_start
from jaxlm.main import train
from jaxlm.rl import Rollouts
from jaxlm.rl.rollout import choose_prompts, group_advantages, sampling_seed, token_rows
from jaxlm.train import checkpoint_reader
from jaxlm.train.loop import Trainer
from jaxlm.train.policy_gradient import ESTIMATORS, PolicyGradient
from tests.helpers import (
    REPO, digit_share, log_softmax64, make_task, random_params, random_token_micro, read_jsonl, rl_config,
    train_base)


def test_group_advantages_by_hand():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    std = np.sqrt(1 / 3)  # [1, 0, 0, 1]: deviations +-0.5, sample variance 4 * 0.25 / 3
    std1 = np.sqrt(0.75 / 3)  # [0, 0, 0, 1]: deviations -0.25 x3, 0.75
    np.testing.assert_allclose(group_advantages(rewards, "grpo"),
                               [[0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4)],
                                [-0.25 / (std1 + 1e-4)] * 3 + [0.75 / (std1 + 1e-4)], [0, 0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(group_advantages(rewards, "grpo", scale=False)[1], [-0.25, -0.25, -0.25, 0.75])
    # RLOO: each reward minus the mean of the other three
    np.testing.assert_allclose(group_advantages(rewards, "rloo"),
                               [[1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3], [-1 / 3, -1 / 3, -1 / 3, 1.0], [0, 0, 0, 0]],
                               rtol=1e-6, atol=1e-7)


def test_prompts_and_samples_are_a_function_of_seed_step_and_attempt():
    a = choose_prompts(100, 8, seed=3, step=5)
    assert (a == choose_prompts(100, 8, 3, 5)).all() and len(set(a.tolist())) == 8
    for other in (choose_prompts(100, 8, 3, 6), choose_prompts(100, 8, 4, 5), choose_prompts(100, 8, 3, 5, attempt=1)):
        assert not (a == other).all()  # another step, seed or rollback attempt draws other prompts
    assert sampling_seed(3, 5) == sampling_seed(3, 5) != sampling_seed(3, 5, 1) != sampling_seed(3, 6)


def test_token_rows_mask_the_response_and_its_end_of_turn():
    rows = token_rows([[5, 6, 7], [8]], [[20, 21, 99], [30]], seq_len=8)
    np.testing.assert_array_equal(rows["inputs"][0], [5, 6, 7, 20, 21, 0, 0, 0])
    np.testing.assert_array_equal(rows["targets"][0], [6, 7, 20, 21, 99, 0, 0, 0])
    np.testing.assert_array_equal(rows["loss_mask"][0], [0, 0, 1, 1, 1, 0, 0, 0])  # 20, 21 and the end of turn 99
    np.testing.assert_array_equal(rows["segment_ids"][0], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(rows["positions"][0], [0, 1, 2, 3, 4, 0, 0, 0])
    np.testing.assert_array_equal(rows["loss_mask"][1], [1, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="do not fit"):
        token_rows([[1] * 6], [[2] * 4], seq_len=8)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_policy_gradient_loss_and_kl_equal_numpy(estimator):
    """The objective's sums (loss, pg_loss, KL, entropy, clip fraction) and its gradient with respect
    to the logits' source equal a float64 numpy computation of the clipped surrogate + beta * KL."""
    config = config_from_dict({"model": {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                         "max_seq_len": 8, "init_std": 0.2},
                               "rl": {"kl_coef": 0.3, "clip": 0.2, "kl_estimator": estimator}})
    model, _, _ = random_params(config.model, seed=1)
    rng = np.random.default_rng(0)
    b, t = 3, 8
    micro = random_token_micro(rng, b, t, 64, 0.6)
    h = model.hidden(micro["inputs"], micro["positions"], micro["segment_ids"])
    logits = np.asarray(jnp.einsum("btd,dv->btv", h, model.unembedding()), np.float64)
    logp_all = log_softmax64(logits)
    logp = np.take_along_axis(logp_all, np.asarray(micro["targets"])[..., None], -1)[..., 0]
    # sampling and reference log-probs near the policy's, some far enough to clip
    old = logp + rng.normal(0, 0.3, (b, t))
    ref = logp + rng.normal(0, 0.5, (b, t))
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, axis=1)
    mask = np.asarray(micro["loss_mask"], np.float64)
    micro.update(advantages=jnp.asarray(adv * mask, jnp.float32), old_logp=jnp.asarray(old, jnp.float32),
                 ref_logp=jnp.asarray(ref, jnp.float32))
    sums = PolicyGradient(config).loss(model, h, micro, train=True)

    a = adv * mask
    ratio = np.exp(logp - old)
    pg = -np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a)
    d = ref - logp
    kl = {"k1": logp - ref, "k3": np.exp(d) - d - 1}
    per_token = pg + 0.3 * kl[estimator]
    total = lambda x: float((x * mask).sum())  # noqa: E731
    np.testing.assert_allclose(float(sums.objective), total(per_token), rtol=2e-5)
    np.testing.assert_allclose(float(sums.weight), mask.sum())
    m = {k: float(v) for k, v in sums.metrics.items()}
    np.testing.assert_allclose(m["pg_loss"], total(pg), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(m["kl"], total(kl[estimator]), rtol=2e-5)
    np.testing.assert_allclose(m["kl_k1"], total(kl["k1"]), rtol=2e-5)
    np.testing.assert_allclose(m["kl_k3"], total(kl["k3"]), rtol=2e-5)
    np.testing.assert_allclose(m["entropy"], total(-(np.exp(logp_all) * logp_all).sum(-1)), rtol=2e-5)
    clipped = (np.clip(ratio, 0.8, 1.2) * a < ratio * a).astype(float)
    assert m["clip_fraction"] == total(clipped) > 0

    # The gradient of the summed objective with respect to the per-token log-probability:
    # d/dlogp [-min(r A, clip(r) A)] = -r A where the unclipped term is taken (0 where clipped), plus
    # beta * (1 for k1; 1 - exp(ref - logp) for k3).
    def as_fn(logp_BT):
        pg_ = -jnp.minimum(jnp.exp(logp_BT - micro["old_logp"]) * micro["advantages"],
                           jnp.clip(jnp.exp(logp_BT - micro["old_logp"]), 0.8, 1.2) * micro["advantages"])
        return jnp.sum((pg_ + 0.3 * ESTIMATORS[estimator](logp_BT, micro["ref_logp"])) * mask)
    grad = np.asarray(jax.grad(as_fn)(jnp.asarray(logp, jnp.float32)))
    dkl = {"k1": np.ones_like(logp), "k3": 1 - np.exp(ref - logp)}[estimator]
    want = (np.where(clipped > 0, 0.0, -ratio * a) + 0.3 * dkl) * mask
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Runs: a tiny SFT base on the shipped task, then RL from it


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    items, dataset = make_task(str(root))
    return items, dataset, train_base(str(root), dataset)


def _trainer(config_dict) -> Trainer:
    config = config_from_dict(config_dict)
    return Trainer(config, init_params=lambda: warm_start.initial_params(config), rollouts=Rollouts(config))


@pytest.mark.slow
def test_a_rollout_is_bitwise_reproducible_from_its_seed(task, tmp_path):
    items, dataset, base = task
    trainer = _trainer(rl_config(tmp_path / "run", base, items, dataset, temperature=1.0))
    try:
        r = trainer.rollouts
        params = trainer.state["params"]
        a, b = r.generate(params, 3), r.generate(params, 3)
        assert a.responses == b.responses and a.texts == b.texts
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert len(a.responses) == 16 and len(set(a.prompt_index.tolist())) == 4  # 4 prompts x 4 samples
        assert len({tuple(p) for p in a.prompts}) == 4 and a.prompts[0] == a.prompts[3] != a.prompts[4]
        # sampled at temperature 1: the 4 answers to a prompt differ, and another step draws others
        assert len({tuple(x) for x in a.responses[:4]}) > 1
        c = r.generate(params, 4)
        assert c.responses != a.responses
        # the rewards are the verifier's, the advantages GRPO's over each group of 4
        np.testing.assert_allclose(a.rewards.ravel(), [digit_share(t, "") for t in a.texts], rtol=1e-6)
        np.testing.assert_allclose(a.advantages, group_advantages(a.rewards, "grpo"), rtol=1e-6)
        # the batch: the same arrays twice, bit for bit; the policy is the reference at the start
        x, y = r.to_batch(a, params), r.to_batch(b, params)
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)
        np.testing.assert_allclose(np.asarray(x["old_logp"]), np.asarray(x["ref_logp"]), atol=1e-6)
        assert x["inputs"].shape == (2, 8, 96) and x["advantages"].dtype == jnp.float32  # 2 micro-batches of 8
        mask = np.asarray(x["loss_mask"]).reshape(16, -1)
        assert (mask.sum(1) == [len(t) for t in a.responses]).all()
        np.testing.assert_array_equal(np.asarray(x["advantages"]).reshape(16, -1),
                                      a.advantages.reshape(-1, 1) * mask)
    finally:
        trainer.close()


@pytest.mark.slow
def test_rl_run_records_and_resumes_exactly(task, tmp_path):
    """Through the trainer core: per-step RL metrics, run.json's reference pointer, the reference
    step in checkpoints; then a run stopped at a checkpoint and resumed gives the uninterrupted
    run's losses and rewards bit for bit (its batches are made anew from the restored policy)."""
    items, dataset, base = task
    full = config_from_dict(rl_config(tmp_path / "full", base, items, dataset, steps=4, every=2))
    train(full)
    rows = [m for m in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward_std", "kl", "kl_k3", "entropy", "response_length", "rollout_seconds",
                "generate_seconds", "rollout_tokens_per_sec", "clip_fraction", "grad_norm"):
        assert all(np.isfinite(m[key]) for m in rows), key
    # the update time of a step is taken when the next rollout starts (none after the last step)
    assert all("update_seconds" in m and 0 < m["rollout_share"] < 1 for m in rows[1:-1])
    assert rows[0]["kl_k3"] < 1e-6 < rows[-1]["kl_k3"]  # the policy starts as the reference, then leaves it
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["rl"]["reference"] == {"from": os.path.abspath(base), "step": 2}
    assert run["rl"]["algorithm"] == "grpo" and run["rl"]["kl_estimator"] == "k3"

    half = rl_config(tmp_path / "part", base, items, dataset, steps=4, every=2)
    train(config_from_dict({**half, "train": {**half["train"], "steps": 2}}))
    train(config_from_dict(half))  # resumes from the checkpoint of step 2
    resumed = {m["step"]: m for m in read_jsonl(tmp_path / "part" / "metrics.jsonl") if "loss" in m}
    for m in rows:
        for key in ("loss", "kl", "reward_mean", "grad_norm", "response_length"):
            assert resumed[m["step"]][key] == m[key], (m["step"], key)
    directory, _ = checkpoint_reader.resolve_source(str(tmp_path / "part"))
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                                 item_handlers=checkpoint_reader.item_handlers())
    try:
        assert checkpoint_reader.read_meta(mngr, 4)["extra"]["rl"] == {"reference_step": 2}
    finally:
        mngr.close()


def _changed(raw: dict, changes: dict) -> dict:
    """A copy of `raw` with section__key=value changes."""
    raw = json.loads(json.dumps(raw))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return raw


def test_rl_configs_fail_clearly_before_any_compute(tmp_path):
    good = rl_config(tmp_path / "run", "runs/base", "data/arithmetic", "data/arith_sft")

    def error(**changes):
        with pytest.raises(ConfigError) as e:
            config_from_dict(_changed(good, changes))
        return str(e.value)

    config_from_dict(good)
    assert "choose grpo or rloo" in error(rl__algorithm="ppo2")
    assert "choose k1 or k3" in error(rl__kl_estimator="k2")
    assert "divide train.global_batch" in error(rl__group_size=3)
    assert "at least 2" in error(rl__group_size=1)
    assert "train.objective=policy_gradient" in error(train__objective="next_token")
    assert "choose grpo or rloo" in error(rl__algorithm="")  # the objective without an algorithm
    assert "set init.from" in error(init__from="")
    assert "rl.prompts is empty" in error(rl__prompts="")
    assert "has no validation loss" in error(train__eval_every=2)
    assert "rl.eval_prompts is empty" in error(rl__eval_every=5)
    assert "clip > 0" in error(rl__clip=0.0)


@pytest.mark.slow
def test_rl_runs_fail_clearly_on_what_they_read(task, tmp_path):
    items, dataset, base = task
    good = rl_config(tmp_path / "run", base, items, dataset)

    def error(**changes):
        with pytest.raises(ConfigError) as e:
            _trainer(_changed(good, changes)).close()
        return str(e.value)

    assert "module:function" in error(rl__reward={"verifier": "digit_share"})
    assert "cannot be loaded" in error(rl__reward={"verifier": "tests.helpers:nope"})
    assert "cannot read" in error(rl__prompts=str(tmp_path / "missing.jsonl"))
    assert "does not fit beside rl.max_new_tokens" in error(rl__max_new_tokens=90)
    assert "no finished checkpoint" in error(init__from=str(tmp_path))


def test_the_shipped_grpo_recipe_starts_from_the_sft_recipe():
    configs = os.path.join(REPO, "configs")
    sft, grpo = (load_config(os.path.join(configs, f"arith_{name}.yaml")) for name in ("sft", "grpo"))
    assert grpo.init.from_ == sft.workdir and grpo.model == sft.model
    assert grpo.data.sources[0].path == sft.data.sources[0].path  # the tokenizer and chat template
    assert grpo.rl.eval_prompts.endswith("test.jsonl") and grpo.rl.prompts.endswith("train.jsonl")
    assert grpo.train.global_batch % grpo.rl.group_size == 0
