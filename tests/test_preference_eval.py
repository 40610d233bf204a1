"""Evaluation around preference tuning on a tiny random chat model: verifier-labelled pairs from a
model's samples, the sampled KL to a reference, reward-model scores, and the alignment-tax table
(a model against itself: no change, win rate one half)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import config_from_dict
from jaxlm.data import format as fmt
from jaxlm.data.chat import DEFAULT_TEMPLATE, SPECIAL_TOKENS, TEMPLATE_FILE, dataset_template
from jaxlm.eval.alignment_tax import alignment_tax, format_table, reward_model_win_rate, win_rate
from jaxlm.eval.divergence import sampled_kl
from jaxlm.eval.loading import from_params
from jaxlm.eval.pairs import pairs_from_answers, score_conversations, verifier_pairs
from jaxlm.eval.verifiers import checked_working, final_number
from jaxlm.model import Transformer
from tests.sft_helpers import train_tokenizer

QUESTIONS = ["What is json?", "Name a river.", "Say hello.", "Count to three."]


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    """(policy, another model, a reward model): tiny llamas over one chat tokenizer."""
    root = tmp_path_factory.mktemp("chatmodel")
    train_tokenizer(root / fmt.TOKENIZER, chat_tokens=True, vocab_size=400)
    (root / TEMPLATE_FILE).write_text(DEFAULT_TEMPLATE)
    (root / fmt.MANIFEST).write_text(json.dumps({"tokenizer": {"add_bos": False}, "chat": {
        "template": TEMPLATE_FILE, "special_tokens": list(SPECIAL_TOKENS), "end_of_turn": "<|end|>"}}))
    models = []
    for seed, head in ((0, False), (1, False), (2, True)):
        cfg = config_from_dict({"data": {"sources": [{"path": str(root)}], "seq_len": 64},
                                "model": dict(vocab_size=416, d_model=32, n_layers=2, n_heads=2, max_seq_len=64,
                                              init_std=0.3, reward_head=head)})
        params = nnx.to_pure_dict(nnx.state(Transformer(cfg.model, rngs=nnx.Rngs(seed))))
        models.append(from_params(cfg, jax.device_put(params)))
    return models, dataset_template(str(root))


def test_pairs_from_answers_pair_rewarded_with_unrewarded_answers():
    items = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]
    answers = [[("#### 2", True), ("#### 3", True), ("#### 2", True), ("#### 2 and on", False), ("#### 5", True)],
               [("#### 4", True), ("#### 4", True)],  # only right answers: no pair
               [("#### 1", True), ("#### 6", False)]]  # the right number, but the answer never ended
    pairs, rewarded = pairs_from_answers(items, answers, final_number)
    assert rewarded == 2 + 2 + 0
    assert pairs == [{"prompt": "1+1?", "chosen": "#### 2", "rejected": "#### 3"}]


def test_checked_working_rewards_a_right_answer_reached_by_right_steps():
    assert checked_working("13 + 18 = 31\n31 + 17 = 48\n#### 48", "48") == 1.0
    assert checked_working("13 + 18 = 37\n37 + 17 = 48\n#### 48", "48") == 0.0  # a lucky final number
    assert checked_working("13 + 18 = 31\n31 + 17 = 48\n#### 47", "48") == 0.0
    assert checked_working("6 x 2 = 12\n12 / 4 = 3\n3 * 5 = 15\n#### 15", "15") == 1.0
    assert checked_working("9 - 12 = -3\n#### -3", "-3") == 1.0
    assert checked_working("#### 7", "7") == 1.0  # no working written: nothing to check
    assert checked_working("1 / 0 = 0\n#### 0", "0") == 0.0


def test_verifier_pairs_samples_are_seeded_and_counted(chat_models):
    (policy, _, _), template = chat_models
    items = [{"question": q, "answer": "x"} for q in QUESTIONS]
    verifier = lambda text, answer: 1.0  # noqa: E731  (a random model rarely ends its turn: every pair needs one)
    pairs, counts = verifier_pairs(policy, template, items, verifier, samples=6, max_new_tokens=8, batch_size=8)
    assert counts == {"questions": 4, "samples": 24, "rewarded": counts["rewarded"], "pairs": len(pairs)}
    assert all(p["prompt"] in QUESTIONS and p["chosen"] != p["rejected"] for p in pairs)
    again, counts_again = verifier_pairs(policy, template, items, verifier, samples=6, max_new_tokens=8, batch_size=8)
    assert (again, counts_again) == (pairs, counts)  # seeded


def test_sampled_kl_is_zero_against_itself_and_scores_follow_the_head(chat_models):
    (policy, other, reward), template = chat_models
    same = sampled_kl(policy, policy, template, QUESTIONS, samples=2, max_new_tokens=6, batch_size=8)
    assert same["kl"] == 0.0 and same["n"] == 8
    moved = sampled_kl(policy, other, template, QUESTIONS, samples=2, max_new_tokens=6, batch_size=8)
    assert moved["n"] == 8 and moved["kl"] != 0.0
    seqs = []
    for n in (5, 9, 3):
        s = np.zeros(n, fmt.MASKED_TOKEN)
        s["token"], s["mask"] = np.arange(10, 10 + n), [0] * (n - 2) + [1, 1]
        seqs.append(s)
    scores = score_conversations(reward, seqs, batch_pairs=1)  # one batch of 2 rows, then another
    model = nnx.merge(reward.graphdef, reward.params)
    for s, got in zip(seqs, scores):
        h = model.hidden(s["token"][None].astype(np.int32), np.arange(len(s))[None], np.ones((1, len(s)), np.int32))
        assert got == pytest.approx(float(model.scores(h)[0, -1]), rel=1e-5, abs=1e-6)


def test_alignment_tax_of_a_model_against_itself(chat_models):
    (policy, other, reward), template = chat_models
    assert win_rate([1, 0, 1, 0.5], [0, 0, 1, 1]) == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    items = [{"question": q, "answer": "1"} for q in QUESTIONS]
    result = alignment_tax(policy, policy, items=items, max_new_tokens=6)
    rows = {r["metric"]: r for r in result["rows"]}
    assert rows["exact match"]["change"] == 0.0
    assert rows["win rate vs base (verifier)"]["tuned"] == 0.5
    prompts = [template.prompt_ids(policy.tokenizer.sp, [{"role": "user", "content": q}]) for q in QUESTIONS]
    judged = reward_model_win_rate(policy, policy, reward, prompts, max_new_tokens=6)
    assert judged["win_rate"] == 0.5 and judged["reward_tuned"] == judged["reward_base"]
    versus = reward_model_win_rate(policy, other, reward, prompts, max_new_tokens=6)
    assert 0.0 <= versus["win_rate"] <= 1.0 and versus["n"] == 4
    table = format_table(result)
    assert "exact match" in table and "+0.0000" in table


@pytest.mark.parametrize("argv, message", [
    (["--workdir", "w", "--alignment-tax"], "--workdir TUNED --base BASE"),
    (["--workdir", "w", "--reference-logps", "out"], "needs --pairs DIR"),
    (["--workdir", "w", "--tasks", "piqa", "--chain-of-thought", "x.jsonl"], "choose one measurement"),
    (["--workdir", "w", "--base", "b", "--alignment-tax", "--text", "t.txt"], "run the others on their own"),
    (["--pairs", "d"], "give the model"),
])
def test_eval_cli_refuses_incomplete_preference_requests(argv, message, capsys):
    from jaxlm.eval.__main__ import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err
