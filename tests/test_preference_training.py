"""Preference tuning through the one loop, on pairs data_prep makes: a reward model learns a rule
that separates chosen from rejected, saves its scalar head in checkpoints and `jaxlm.eval --reward`
reads it back; DPO starts at log 2 against its frozen reference, runs the same with the reference
log-probabilities cached in the records, and resumes exactly."""

import json

import numpy as np
import pytest

from data_prep import prepare
from data_prep.config import config_from_dict as prep_config
from jaxlm.config import config_from_dict
from jaxlm.eval.__main__ import main as eval_main
from jaxlm.eval.loading import load_workdir
from jaxlm.eval.pairs import reward_accuracy
from jaxlm.main import train
from jaxlm.train.checkpoint_reader import read_params
from tests.sft_helpers import train_tokenizer

WORDS = "apple river stone cloud green quick seven table music light paper north".split()


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """Pairs whose chosen answer is always "Good answer." and rejected "Bad answer." (a rule a
    reward model and DPO learn in a few steps), with random prompts."""
    root = tmp_path_factory.mktemp("rm")
    rng = np.random.default_rng(0)
    rows = [{"prompt": " ".join(rng.choice(WORDS, 4)) + "?", "chosen": "Good answer.", "rejected": "Bad answer."}
            for _ in range(160)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tokenizer(root / "tok.model", chat_tokens=False, vocab_size=400)
    prepare(prep_config({"output": str(root / "data"), "sources": [{"name": "p", "type": "pairs",
                                                                    "paths": [str(root / "pairs.jsonl")]}],
                         "split": {"val_fraction": 0.2}, "tokenizer": {"path": tok}, "chat": {"max_tokens": 32},
                         "workers": 1}), log=lambda _: None)
    return root


def run_config(workdir, data, **train_kw):
    t = {"steps": 12, "global_batch": 16, "log_every": 1, "eval_every": 12, "eval_batches": 2, **train_kw.pop("train", {})}
    return config_from_dict({
        "workdir": str(workdir), "seed": 0,
        "data": {"sources": [{"path": str(data)}], "seq_len": 32},
        "model": {"vocab_size": 416, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32, "reward_head": True},
        "optim": {"lr": 3e-3, "weight_decay": 0.0, "schedule": {"name": "constant"}},
        "checkpoint": {"every_steps": 6, "async_save": False}, "log": {"progress": False},
        "train": t, **train_kw})


def metrics(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reward_run(pairs_dir):
    workdir = pairs_dir / "rm_run"
    train(run_config(workdir, pairs_dir / "data", train={"objective": "reward"}))
    return workdir


@pytest.mark.slow
def test_reward_model_learns_saves_its_head_and_eval_reads_it(reward_run, pairs_dir, capsys):
    rows = metrics(reward_run)
    evals = [r for r in rows if "val_accuracy" in r]
    assert evals and evals[-1]["val_accuracy"] == 1.0 and evals[-1]["val_score_margin"] > 0
    assert rows[1]["loss"] > rows[-2]["loss"]
    config, params = read_params(str(reward_run))
    assert config.model.reward_head and params["reward_head"].shape == (32,)
    assert float(np.abs(np.asarray(params["reward_head"])).sum()) > 0
    em = load_workdir(str(reward_run))
    result = reward_accuracy(em, str(pairs_dir / "data"))
    assert result["accuracy"] == 1.0 and result["count"] == json.load(open(pairs_dir / "data/manifest.json"))["splits"]["val"]["documents"]
    assert eval_main(["--reward", str(reward_run), "--pairs", str(pairs_dir / "data")]) == 0
    out = capsys.readouterr().out
    assert "accuracy        1" in out and f"count           {result['count']}" in out


@pytest.mark.slow
def test_dpo_starts_at_log2_cached_reference_matches_and_resumes_exactly(reward_run, pairs_dir, capsys):
    data = pairs_dir / "data"
    kw = {"init": {"from": str(reward_run)}, "train": {"objective": "dpo"}, "preference": {"beta": 0.5}}
    on_the_fly = pairs_dir / "dpo"
    train(run_config(on_the_fly, data, **kw))
    rows = [r for r in metrics(on_the_fly) if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # the policy starts as its reference
    assert abs(rows[0]["reward_margin"]) < 1e-5
    assert rows[-1]["reward_margin"] > 0.5 and rows[-1]["reward_accuracy"] == 1.0
    val = [r for r in metrics(on_the_fly) if "val_reward_accuracy" in r][-1]
    assert val["val_reward_accuracy"] == 1.0

    # the reference's log-probabilities written into the records: the same run, number for number
    cached_data = pairs_dir / "data_ref"
    assert eval_main(["--workdir", str(reward_run), "--pairs", str(data), "--reference-logps", str(cached_data)]) == 0
    cached = pairs_dir / "dpo_cached"
    train(run_config(cached, cached_data, **{**kw, "preference": {"beta": 0.5, "reference": "cached"}}))
    got = [r for r in metrics(cached) if "loss" in r]
    # at step 1 the policy is the reference: the cached values equal its log-probabilities (computed
    # by evaluation's one-device program, the on-the-fly ones on the 8-device mesh: float32 rounding)
    assert got[0]["loss"] == pytest.approx(np.log(2), abs=1e-6) and abs(got[0]["reward_margin"]) < 1e-5
    for key in ("loss", "logp_chosen", "logp_rejected", "grad_norm"):
        assert got[0][key] == pytest.approx(rows[0][key], rel=1e-5), key
    for key in ("loss", "reward_margin"):  # and the runs stay together (the rounding grows a little)
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in rows], rtol=1e-3, atol=1e-5, err_msg=key)

    # stopped after step 6 (its checkpoint) and started again: the reference is rebuilt from init.from
    resumed = pairs_dir / "dpo_resumed"
    train(run_config(resumed, data, **{**kw, "train": {"objective": "dpo", "steps": 6}}))
    train(run_config(resumed, data, **kw))
    again = {r["step"]: r["loss"] for r in metrics(resumed) if "loss" in r}
    assert [again[s] for s in range(7, 13)] == [r["loss"] for r in rows if r["step"] >= 7]
