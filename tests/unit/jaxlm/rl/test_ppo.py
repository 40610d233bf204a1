"""PPO (rl.algorithm: ppo): GAE, whitening, the clipped value loss and the PPO objective (value and
gradient) against float64 numpy; a rollout's PPO fields against numpy from its own log-probs and
values; a short run that logs the critic's metrics and resumes bit for bit; config errors."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ConfigError, RLConfig, config_from_dict, load_config
from jaxlm.interop import warm_start
from jaxlm.interop.hf import export_hf, load_hf
from jaxlm.main import train
from jaxlm.rl import Rollouts
from jaxlm.rl.rollout import last_token_scores
from jaxlm.train import advantages as adv_lib
from jaxlm.train import checkpoint_reader
from jaxlm.train.loop import Trainer
from jaxlm.train.policy_gradient import PolicyGradient
from tests.helpers import (
    REPO, log_softmax64, make_task, random_params, random_token_micro, read_jsonl, rl_config, train_base)


def numpy_gae(rewards, values, mask, gamma, lam):
    """Schulman et al. 2016 by the definition: per row, backwards over the masked positions."""
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        t_on = np.nonzero(mask[b])[0]
        running = 0.0
        for i, t in reversed(list(enumerate(t_on))):
            v_next = values[b, t_on[i + 1]] if i + 1 < len(t_on) else 0.0
            delta = rewards[b, t] + gamma * v_next - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv, (adv + values) * mask


def test_gae_whitening_and_explained_variance_equal_numpy():
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 9))
    mask[0, 2:9], mask[1, 4:6], mask[2, 1:5] = 1, 1, 1  # prompts before, padding after each response
    rewards = rng.normal(0, 1, mask.shape) * mask
    values = rng.normal(0, 1, mask.shape) * mask
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)]:
        adv, ret = adv_lib.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                               jnp.asarray(mask, jnp.int32), gamma=gamma, lam=lam)
        want_adv, want_ret = numpy_gae(rewards, values, mask, gamma, lam)
        np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-6)
    # lambda = 1, gamma = 1: the advantage is the sum of the rewards to come minus the value
    adv, _ = adv_lib.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                         jnp.asarray(mask, jnp.int32), gamma=1.0, lam=1.0)
    to_come = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(np.asarray(adv), (to_come - values) * mask, rtol=1e-5, atol=1e-6)

    on = mask > 0
    x = rng.normal(2, 3, mask.shape)
    white = np.where(on, (x - x[on].mean()) / np.sqrt(x[on].var() + 1e-8), 0.0)
    got = np.asarray(adv_lib.whiten(jnp.asarray(x, jnp.float32), jnp.asarray(mask)))
    np.testing.assert_allclose(got, white, rtol=1e-5, atol=1e-6)
    assert abs(got[on].mean()) < 1e-6 and abs(got[on].std() - 1) < 1e-5

    ret = rng.normal(0, 1, mask.shape)
    ev = 1 - (ret - values)[on].var() / ret[on].var()
    np.testing.assert_allclose(float(adv_lib.explained_variance(jnp.asarray(values, jnp.float32),
                                                                jnp.asarray(ret, jnp.float32), jnp.asarray(mask))),
                               ev, rtol=1e-5)
    assert float(adv_lib.explained_variance(jnp.asarray(ret), jnp.asarray(ret), jnp.asarray(mask))) == 1.0


def test_last_token_scores_put_each_reward_on_its_response_end():
    mask = np.array([[0, 1, 1, 1, 0], [0, 0, 0, 1, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(last_token_scores(np.array([0.5, -2.0, 3.0]), mask),
                                  [[0, 0, 0, 0.5, 0], [0, 0, 0, -2.0, 0], [0, 0, 0, 0, 3.0]])


PPO_RL = {"algorithm": "ppo", "kl_coef": 0.3, "clip": 0.2, "vf_coef": 0.7, "value_clip": 0.2}


def test_ppo_loss_and_gradient_equal_numpy():
    """The objective's sums and its gradient with respect to the hidden states (through the policy's
    log-probabilities and the value head) equal float64 numpy: clipped surrogate + vf_coef * 0.5 *
    max((V - R)^2, (clip(V, old_V +- c) - R)^2), with no KL term in the loss."""
    config = config_from_dict({"model": {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                         "max_seq_len": 8, "init_std": 0.2, "value_head": True}})
    config = dataclasses.replace(config, rl=RLConfig(**PPO_RL))  # the loss alone: no run around it
    model, _, _ = random_params(config.model, seed=1)
    rng = np.random.default_rng(0)
    model.value_head[...] = jnp.asarray(rng.normal(0, 0.5, 32), jnp.float32)  # a critic that is not zero
    model.value_bias[...] = jnp.asarray([0.3], jnp.float32)
    b, t = 3, 8
    micro = random_token_micro(rng, b, t, 64, 0.7)
    h = model.hidden(micro["inputs"], micro["positions"], micro["segment_ids"])
    h64, u64 = np.asarray(h, np.float64), np.asarray(model.unembedding(), np.float64)
    logp_all = log_softmax64(h64 @ u64)
    targets = np.asarray(micro["targets"])
    logp = np.take_along_axis(logp_all, targets[..., None], -1)[..., 0]
    w, bias = np.asarray(model.value_head[...], np.float64), 0.3
    values = h64 @ w + bias
    old = logp + rng.normal(0, 0.3, (b, t))
    ref = logp + rng.normal(0, 0.5, (b, t))
    old_values = values + rng.normal(0, 0.3, (b, t))  # some beyond value_clip: clipped
    returns = rng.normal(0, 1, (b, t))
    mask = np.asarray(micro["loss_mask"], np.float64)
    adv = rng.normal(0, 1, (b, t)) * mask  # per token, as GAE gives
    micro.update({k: jnp.asarray(v * mask, jnp.float32) for k, v in
                  dict(advantages=adv, old_logp=old, ref_logp=ref, old_values=old_values, returns=returns).items()})
    objective = PolicyGradient(config)
    assert objective.batch_fields[-2:] == ("old_values", "returns") and "returns" in objective.float_fields
    graphdef, state = nnx.split(model)

    def objective_of(state_, h_):  # compiled whole: op by op, the model's many small programs compile slowly
        return objective.loss(nnx.merge(graphdef, state_), h_, micro, train=True)

    sums = jax.jit(objective_of)(state, h)

    old, ref, old_values, returns = old * mask, ref * mask, old_values * mask, returns * mask
    ratio = np.exp(logp - old)
    pg = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)
    v_clip = old_values + np.clip(values - old_values, -0.2, 0.2)
    plain, far = (values - returns) ** 2, (v_clip - returns) ** 2
    value_loss = 0.5 * np.maximum(plain, far)
    total = lambda x: float((x * mask).sum())  # noqa: E731
    np.testing.assert_allclose(float(sums.objective), total(pg + 0.7 * value_loss), rtol=2e-5)
    m = {k: float(v) for k, v in sums.metrics.items()}
    np.testing.assert_allclose(m["pg_loss"], total(pg), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(m["value_loss"], total(value_loss), rtol=2e-5)
    np.testing.assert_allclose(m["kl"], total(np.exp(ref - logp) - (ref - logp) - 1), rtol=2e-5)  # logged, not in the loss
    inside = np.abs(values - old_values) < 0.2
    bit = (far > plain) & ~inside  # where the clip bit (inside the range both errors are one)
    assert 0 < m["value_clip_fraction"] == total(bit.astype(float)) < mask.sum()

    # d objective / d h: through log p(target) into the logits, and through V = h.w + b
    clipped = np.clip(ratio, 0.8, 1.2) * adv < ratio * adv
    d_logp = np.where(clipped, 0.0, -ratio * adv) * mask
    p = np.exp(logp_all)
    d_logits = d_logp[..., None] * (np.eye(64)[targets] - p)
    d_v = 0.7 * np.where(bit, 0.0, values - returns) * mask  # a clipped V does not move the loss
    want = d_logits @ u64.T + d_v[..., None] * w
    grads, grad = jax.jit(jax.grad(lambda s, h_: objective_of(s, h_).objective, argnums=(0, 1)))(state, h)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=2e-6)
    # and the value head's own parameters: dL/dw = sum_t dV_t h_t, dL/db = sum_t dV_t
    np.testing.assert_allclose(np.asarray(grads["value_head"][...]), np.einsum("bt,btd->d", d_v, h64), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads["value_bias"][...]), [d_v.sum()], rtol=1e-4, atol=1e-6)


def test_grpo_keeps_its_fields_and_metrics():
    config = config_from_dict({})
    objective = PolicyGradient(config)
    assert objective.batch_fields == PolicyGradient.batch_fields and not objective.ppo
    assert "old_values" not in objective.float_fields


# ----------------------------------------------------------------------------------------------
# Runs: a tiny SFT base on the shipped task, then PPO from it


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    items, dataset = make_task(str(root))
    return items, dataset, train_base(str(root), dataset)


def ppo_config(workdir, base, items, dataset, **kw) -> dict:
    raw = rl_config(workdir, base, items, dataset, algorithm="ppo", kl_estimator="k1", kl_coef=0.2, **kw)
    raw["model"]["value_head"] = True
    return raw


@pytest.mark.slow  # a tiny SFT base, then RL through the trainer: minutes on 2 loaded cores
def test_ppo_rollout_fields_equal_numpy_from_its_logprobs_and_values(task, tmp_path):
    """to_batch's PPO fields: rewards = the verifier's on each response's last token - kl_coef * k1,
    then GAE over the old values, advantages whitened over every response token of the batch."""
    items, dataset, base = task
    config = config_from_dict(ppo_config(tmp_path / "run", base, items, dataset, temperature=1.0))
    trainer = Trainer(config, init_params=lambda: warm_start.initial_params(config), rollouts=Rollouts(config))
    try:
        r = trainer.rollouts
        params = trainer.state["params"]
        assert not np.asarray(params["value_head"]).any() and not np.asarray(params["value_bias"]).any()
        # a policy away from the reference, with a critic that is not zero: KL and values in play
        policy = dict(params, embed=params["embed"] * 1.1, value_head=params["value_head"] + 0.05,
                      value_bias=params["value_bias"] + 0.2)
        rollout = r.generate(params, 1)
        assert rollout.advantages is None
        batch = {k: np.asarray(v, np.float64).reshape(16, -1) for k, v in r.to_batch(rollout, policy).items()}
        mask = batch["loss_mask"]
        assert mask.sum() > 16 and np.abs(batch["old_logp"] - batch["ref_logp"]).max() > 1e-3
        assert np.abs(batch["old_values"]).min(where=mask > 0, initial=9) > 0  # the critic's estimates
        scores = last_token_scores(rollout.rewards.ravel(), mask)
        rewards = (scores - 0.2 * (batch["old_logp"] - batch["ref_logp"])) * mask
        adv, ret = numpy_gae(rewards, batch["old_values"], mask, 1.0, 0.95)
        on = mask > 0
        white = np.where(on, (adv - adv[on].mean()) / np.sqrt(adv[on].var() + 1e-8), 0.0)
        np.testing.assert_allclose(batch["returns"], ret, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batch["advantages"], white, rtol=1e-4, atol=1e-4)
    finally:
        trainer.close()


@pytest.mark.slow  # a tiny SFT base, then RL through the trainer: minutes on 2 loaded cores
def test_ppo_run_logs_the_critic_and_resumes_exactly(task, tmp_path):
    """Two PPO steps through the trainer core log the value metrics and move the value head off zero;
    a run stopped at step 1's checkpoint and resumed gives the same step 2, bit for bit."""
    items, dataset, base = task
    full = ppo_config(tmp_path / "full", base, items, dataset, steps=2, every=1)
    train(config_from_dict(full))
    rows = [m for m in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in rows] == [1, 2]
    for key in ("value_loss", "value_clip_fraction", "explained_variance", "pg_loss", "kl", "reward_mean",
                "clip_fraction", "grad_norm"):
        assert all(np.isfinite(m[key]) for m in rows), key
    assert rows[0]["value_loss"] > 0 and rows[0]["value_clip_fraction"] == 0  # one update per rollout: V = old V
    assert rows[0]["explained_variance"] <= 0  # a zero critic explains nothing yet
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["rl"]["algorithm"] == "ppo"
    _, params = checkpoint_reader.read_params(str(tmp_path / "full"))
    assert np.abs(np.asarray(params["value_head"])).max() > 0 and np.asarray(params["value_bias"])[0] != 0

    part = ppo_config(tmp_path / "part", base, items, dataset, steps=2, every=1)
    train(config_from_dict({**part, "train": {**part["train"], "steps": 1}}))
    train(config_from_dict(part))  # resumes from the checkpoint of step 1: critic and optimizer included
    resumed = {m["step"]: m for m in read_jsonl(tmp_path / "part" / "metrics.jsonl") if "loss" in m}
    for m in rows:
        for key in ("loss", "value_loss", "explained_variance", "kl", "reward_mean", "grad_norm"):
            assert resumed[m["step"]][key] == m[key], (m["step"], key)


def test_ppo_configs_fail_clearly_before_any_compute(tmp_path):
    good = ppo_config(tmp_path / "run", "runs/base", "data/arithmetic", "data/arith_sft")
    config = config_from_dict(good)
    assert config.rl.gamma == 1.0 and config.rl.lam == 0.95 and config.rl.vf_coef == 0.1

    def error(section, **changes):
        raw = json.loads(json.dumps(good))
        raw[section].update(changes)
        with pytest.raises(ConfigError) as e:
            config_from_dict(raw)
        return str(e.value)

    assert "set model.value_head=true" in error("model", value_head=False)
    assert "gamma and lam in [0, 1]" in error("rl", gamma=1.5)
    assert "gamma and lam in [0, 1]" in error("rl", lam=-0.1)
    assert "vf_coef >= 0" in error("rl", vf_coef=-1.0)
    assert "value_clip > 0" in error("rl", value_clip=0.0)
    assert "at least 1" in error("rl", group_size=0)
    config_from_dict({**good, "rl": {**good["rl"], "group_size": 1}})  # ppo needs no group
    grpo = json.loads(json.dumps(good))
    grpo["rl"]["algorithm"] = "grpo"
    with pytest.raises(ConfigError, match="does not train it: set model.value_head=false"):
        config_from_dict(grpo)


def test_the_shipped_ppo_recipe_is_the_sft_model_with_a_critic():
    configs = os.path.join(REPO, "configs")
    sft, ppo = (load_config(os.path.join(configs, f"arith_{name}.yaml")) for name in ("sft", "ppo"))
    assert ppo.init.from_ == sft.workdir and ppo.model == dataclasses.replace(sft.model, value_head=True)
    assert ppo.data.sources[0].path == sft.data.sources[0].path and ppo.rl.algorithm == "ppo"


def test_an_exported_ppo_policy_is_the_plain_model(tmp_path):
    """The critic is a training aid: the Hugging Face export of a value-head model holds the policy alone."""
    config = config_from_dict({"model": {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                         "max_seq_len": 8, "value_head": True}})
    _, _, params = random_params(config.model, seed=2)
    export_hf(config.model, params, str(tmp_path))
    cfg, back = load_hf(str(tmp_path))
    assert not cfg.value_head and set(back) == set(params) - {"value_head", "value_bias"}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 back, {k: params[k] for k in back})
