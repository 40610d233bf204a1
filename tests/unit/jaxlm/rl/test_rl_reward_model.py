"""Online RL with rewards from a trained reward model (rl.reward.model): a rollout's rewards are
`jaxlm.eval`'s reward-model scores of the same prompts and responses; a run through the trainer
core records the reward model and resumes exactly, and refuses to resume when the reward model
changed; the config mistakes are refused before any compute, each with its message."""

import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_prep import prepare
from data_prep.config import config_from_dict as data_config
from jaxlm import main as jaxlm_main
from jaxlm.config import ConfigError, config_from_dict, dump_yaml, load_config
from jaxlm.eval.loading import load_workdir
from jaxlm.eval.pairs import conversation, score_conversations
from jaxlm.interop import warm_start
from jaxlm.rl import Rollouts
from jaxlm.rl.rollout import group_advantages
from jaxlm.train import checkpoint_reader
from jaxlm.train.loop import Trainer
from tests.helpers import REPO, RL_MODEL, make_task, read_jsonl, rl_config, sft_config, train_base


def _pairs(items: str, dataset: str, out: str) -> str:
    """(right, wrong) answer pairs on the task's training problems, tokenized with the policy's tokenizer."""
    with open(os.path.join(items, "train.jsonl"), encoding="utf-8") as f:
        problems = [json.loads(line) for line in f][:48]
    rows = [{"prompt": p["instruction"], "chosen": p["output"], "rejected": f"#### {int(p['answer']) + 1}"}
            for p in problems]
    path = os.path.join(out, "pairs.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    pairs = os.path.join(out, "arith_pairs")
    tokenizer = {"path": os.path.join(dataset, "tokenizer.model")}  # the policy's: the same ids
    prepare(data_config({"output": pairs, "sources": [{"name": "p", "type": "pairs", "paths": [path]}],
                         "split": {"val_fraction": 0.0}, "tokenizer": tokenizer,
                         "chat": {"max_tokens": 128}, "workers": 1}), log=lambda _: None)
    return pairs


def _reward_config(workdir, base, pairs: str) -> dict:
    raw = sft_config(workdir, pairs, steps=2)
    raw.update(init={"from": base}, model={**RL_MODEL, "reward_head": True})
    raw["train"].update(objective="reward")
    raw["checkpoint"].update(every_steps=1)  # steps 1 and 2: the test swaps one for the other
    return raw


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    """(the arithmetic items folder, the instruction dataset), with no model trained."""
    return make_task(str(tmp_path_factory.mktemp("rlrm")))


@pytest.fixture(scope="module")
def task(task_data, tmp_path_factory):
    """(items, dataset, SFT base, reward model trained from it on (right, wrong) answer pairs)."""
    items, dataset = task_data
    root = str(tmp_path_factory.mktemp("rlrm_runs"))
    base = train_base(root, dataset)
    rm = os.path.join(root, "rm")
    jaxlm_main.train(config_from_dict(_reward_config(rm, base, _pairs(items, dataset, root))))
    return items, dataset, base, rm


def _config(workdir, task, *, steps=2, every=1, model=None, **rl) -> dict:
    items, dataset, base, rm = task[:4]
    raw = rl_config(workdir, base, items, dataset, steps=steps, every=every, **rl)
    raw["rl"]["reward"] = {"model": model or rm}
    return raw


def _trainer(raw) -> Trainer:
    config = config_from_dict(raw)
    return Trainer(config, init_params=lambda: warm_start.initial_params(config), rollouts=Rollouts(config))


@pytest.mark.slow
def test_rollout_rewards_are_the_reward_models_scores(task, tmp_path):
    trainer = _trainer(_config(tmp_path / "run", task, temperature=1.0,
                               eval_prompts=os.path.join(task[0], "test.jsonl")))
    try:
        r = trainer.rollouts
        rollout = r.generate(trainer.state["params"], 3)
        assert rollout.rewards.shape == (4, 4) and rollout.rewards.dtype == np.float32
        # what `python -m jaxlm.eval --reward` scores: the reward model's head on prompt + response
        want = score_conversations(load_workdir(task[3]), [conversation(p, resp) for p, resp in
                                                           zip(rollout.prompts, rollout.responses)], batch_pairs=3)
        np.testing.assert_allclose(rollout.rewards.ravel(), want, rtol=1e-5, atol=1e-6)
        assert np.ptp(want) > 1e-3  # distinct responses, distinct scores: a misplaced row would show
        assert any(resp[-1] == r.eot for resp in rollout.responses)  # ended responses are scored with their end of turn
        np.testing.assert_allclose(rollout.advantages, group_advantages(rollout.rewards, "grpo"), rtol=1e-6)
        # held-out evaluation: the mean reward-model score of the greedy answers
        result = r.evaluate(trainer.eval_params())  # 12 answers: one call of 16 rows, 4 of them empty
        assert result["eval_n"] == 12 and np.isfinite(result["eval_reward"])
    finally:
        trainer.close()


def _extra(workdir, step: int) -> dict:
    directory, _ = checkpoint_reader.resolve_source(str(workdir))
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                                 item_handlers=checkpoint_reader.item_handlers())
    try:
        return checkpoint_reader.read_meta(mngr, step)["extra"]["rl"]
    finally:
        mngr.close()


@pytest.mark.slow
def test_rl_with_a_reward_model_records_and_resumes_exactly_and_refuses_another(task, tmp_path):

    items, dataset, base, rm = task
    jaxlm_main.train(config_from_dict(_config(tmp_path / "full", task)))
    rows = [m for m in read_jsonl(tmp_path / "full" / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in rows] == [1, 2]
    assert all(np.isfinite(m["reward_mean"]) and m["reward_std"] > 0 for m in rows)
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    record = run["rl"]["reward"]["model"]
    assert record["from"] == os.path.abspath(rm) and record["step"] == 2 and len(record["checksum"]) == 16
    assert _extra(tmp_path / "full", 2) == {"reference_step": 2, "reward_model": record}

    # a copy of the reward model that can be changed under the run
    live = str(tmp_path / "rm_live")
    shutil.copytree(rm, live)
    part = _config(tmp_path / "part", task, model=live)
    jaxlm_main.train(config_from_dict({**part, "train": {**part["train"], "steps": 1}}))
    step2 = os.path.join(live, "checkpoints", "2")
    shutil.rmtree(step2)
    shutil.copytree(os.path.join(rm, "checkpoints", "1"), step2)  # the same workdir and step, other parameters
    with pytest.raises(ConfigError, match="the reward model changed"):
        _trainer(part).close()
    with pytest.raises(ConfigError, match="trained with rewards from .*rm_live"):
        _trainer(_config(tmp_path / "part", task, model=rm)).close()
    verifier = _config(tmp_path / "part", task)
    verifier["rl"]["reward"] = {"verifier": "tests.helpers:digit_share"}
    with pytest.raises(ConfigError, match="trained with rewards from the reward model"):
        _trainer(verifier).close()
    shutil.rmtree(step2)
    shutil.copytree(os.path.join(rm, "checkpoints", "2"), step2)
    jaxlm_main.train(config_from_dict(part))  # resumes from the checkpoint of step 1
    resumed = {m["step"]: m for m in read_jsonl(tmp_path / "part" / "metrics.jsonl") if "loss" in m}
    for m in rows:
        for key in ("loss", "kl", "reward_mean", "reward_std", "grad_norm", "response_length"):
            assert resumed[m["step"]][key] == m[key], (m["step"], key)


def test_reward_model_configs_fail_clearly_before_any_compute(task_data, tmp_path):
    """Each mistake in rl.reward, refused when the run's Rollouts are made (no trainer, no state,
    nothing compiled); the reward-model workdirs here are config.yaml files alone."""
    items, dataset = task_data
    good = rl_config(tmp_path / "run", os.path.join(tmp_path, "base"), items, dataset)

    def workdir(name: str, raw: dict, checkpoint: bool = False) -> str:
        path = tmp_path / name
        os.makedirs(path / "checkpoints" / "2" if checkpoint else path)
        (path / "config.yaml").write_text(dump_yaml(config_from_dict(raw)))
        return str(path)

    def error(**reward):
        with pytest.raises(ConfigError) as e:
            Rollouts(config_from_dict({**good, "rl": {**good["rl"], "reward": reward}}))
        return str(e.value)

    assert "exactly one of verifier" in error(verifier="tests.helpers:digit_share", model=str(tmp_path))
    assert "exactly one of verifier" in error()
    assert "does not exist" in error(model=str(tmp_path / "nowhere"))
    assert "holds no config.yaml" in error(model=str(tmp_path))
    sft = workdir("sft", sft_config(tmp_path / "sft", dataset), checkpoint=True)
    message = error(model=sft)
    assert "is not a reward model" in message and "train.objective=next_token" in message
    untrained = workdir("untrained", _reward_config(tmp_path / "untrained", sft, dataset))
    assert "has no finished checkpoint" in error(model=untrained)
    # a reward model of another tokenizer (the same problems, a vocabulary of 400)
    other = str(tmp_path / "other_data")
    prepare(data_config({"output": other, "sources": [{"name": "train", "type": "alpaca",
                                                       "paths": [os.path.join(items, "train.jsonl")]}],
                         "tokenizer": {"vocab_size": 400, "num_threads": 1}, "workers": 1,
                         "chat": {"max_tokens": 128}}), log=lambda _: None)
    foreign = workdir("foreign", _reward_config(tmp_path / "foreign", sft, other), checkpoint=True)
    assert "another tokenizer" in error(model=foreign)
    good_rm = workdir("good_rm", _reward_config(tmp_path / "good_rm", sft, dataset), checkpoint=True)
    assert Rollouts(config_from_dict({**good, "rl": {**good["rl"], "reward": {"model": good_rm}}})).reward_model


def test_the_shipped_reward_model_recipe_feeds_the_grpo_one():
    configs = os.path.join(REPO, "configs")
    grpo, rm, sft = (load_config(os.path.join(configs, f"{name}.yaml"))
                     for name in ("arith_grpo_rm", "reward_arith", "arith_sft"))
    assert grpo.rl.reward.model == rm.workdir and not grpo.rl.reward.verifier and rm.model.reward_head
    assert grpo.init.from_ == sft.workdir == rm.init.from_ and grpo.model == sft.model
    assert grpo.data.sources[0].path == sft.data.sources[0].path
