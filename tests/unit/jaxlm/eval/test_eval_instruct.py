"""`jaxlm.eval --instruct` (held-out loss on response tokens only) and `--chain-of-thought` (exact
match of chat answers), on a tiny masked dataset and a tiny random model."""

import json
import os

import jax
import numpy as np
import pytest
import sentencepiece as spm

from data_prep import prepare
from data_prep.arithmetic import main as make_task
from data_prep.config import config_from_dict
from data_prep.instruct import conversations
from jaxlm.data.shards import DocumentSource, open_dataset
from jaxlm.eval.__main__ import main as eval_main
from jaxlm.eval.chat import workdir_template
from jaxlm.eval.errors import EvalError
from jaxlm.eval.instruct import chain_of_thought, instruction_loss, read_cot_items, trained_runs
from jaxlm.eval.loading import from_params
from tests.helpers import CHAT_TEXT, random_model, train_tokenizer

CHATS = [
    [{"role": "user", "content": "What does json.dumps do?"}, {"role": "assistant", "content": "Serialize obj to JSON."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "It is 6."}],
    [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April."},
     {"role": "assistant", "content": "She sold 48.\n#### 48"}],
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct")
    base = train_tokenizer(root / "base.model", chat_tokens=False)
    with open(root / "chat.jsonl", "w", encoding="utf-8") as f:
        for chat in CHATS:
            f.write(json.dumps({"messages": chat}) + "\n")
    with open(root / "train.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}))
    out = str(root / "sft")
    prepare(config_from_dict({"output": out, "sources": [{"name": "c", "type": "chat", "paths": [str(root / "chat.jsonl")],
                                                          "split": {"by": "hash", "val_fraction": 1.0}},
                                                         {"name": "t", "type": "chat", "paths": [str(root / "train.jsonl")],
                                                          "split": {"by": "hash", "val_fraction": 0.0}}],
                              "tokenizer": {"path": base}, "workers": 1}), log=lambda _: None)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    config, params = random_model("llama", vocab_size=sp.vocab_size(), seq_len=32, dataset=out, seed=2)
    return out, from_params(config, params)


def test_trained_runs():
    assert trained_runs(np.array([1, 1, 0, 1, 1, 0, 0, 1])) == [(1, 2), (3, 5), (7, 8)]
    assert trained_runs(np.array([0, 0])) == []


def test_instruction_loss_scores_response_tokens_only(data):
    out, em = data
    result = instruction_loss(em, out, batch_size=4)
    docs = DocumentSource(open_dataset(out), "val")
    assert len(docs) == result["examples"] == len(CHATS)
    # The same number by hand: the whole conversation through the model, NLL where the mask is 1.
    model = __import__("flax").nnx.merge(em.graphdef, em.params)
    nll, tokens, cut = [], [], 0
    for i in range(len(docs)):
        ids, mask = docs[i]["token"].astype(np.int32), docs[i]["mask"]
        if len(ids) > em.window + 1:
            ids, mask, cut = ids[:em.window + 1], mask[:em.window + 1], cut + 1
        logp = np.asarray(jax.nn.log_softmax(model(ids[None, :-1])[0], axis=-1))
        picked = logp[np.arange(len(ids) - 1), ids[1:]]
        on = mask[1:].astype(bool)
        assert on.sum() < len(ids) - 1  # prompts are there and are not scored
        nll.append(-picked[on].sum())
        tokens.append(int(on.sum()))
    assert result["response_tokens"] == sum(tokens) and result["examples_truncated"] == cut
    assert cut >= 1  # the multi-turn example is longer than the 32-token window
    np.testing.assert_allclose(result["loss"], sum(nll) / sum(tokens), rtol=1e-5)
    np.testing.assert_allclose(result["loss_per_example"], np.mean(np.array(nll) / np.array(tokens)), rtol=1e-5)
    np.testing.assert_allclose([e["nll"] for e in result["per_example"]], nll, rtol=1e-5)


def test_instruction_loss_refuses_pretraining_data(tmp_path):
    base = train_tokenizer(tmp_path / "base.model", chat_tokens=False)
    with open(tmp_path / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(CHAT_TEXT[:6]):
            f.write(json.dumps({"text": f"{text} Document {i} of a plain corpus, written out in full."}) + "\n")
    out = tmp_path / "plain"
    paths = [str(tmp_path / "docs.jsonl")]
    prepare(config_from_dict({"output": str(out), "workers": 1, "tokenizer": {"path": base},
                              "sources": [{"name": "v", "type": "jsonl", "paths": paths, "split": {"by": "hash", "val_fraction": 1.0}},
                                          {"name": "t", "type": "jsonl", "paths": paths, "split": {"by": "hash", "val_fraction": 0.0}}]}),
            log=lambda _: None)
    vocab = spm.SentencePieceProcessor(model_file=base).vocab_size()
    config, params = random_model("llama", vocab_size=vocab)
    with pytest.raises(EvalError, match="tokens_mask"):
        instruction_loss(from_params(config, params), str(out))


def test_chain_of_thought_and_cli(data, tmp_path, capsys):
    out, em = data
    items = [{"question": "Natalia sold 48 clips in April and half as many in May. How many?", "answer": "... #### 72"},
             {"question": "2+2?", "answer": "4"}]
    result = chain_of_thought(em, workdir_template(em), items, max_new_tokens=8, log_samples=True)
    # A random model writes no "#### answer" line: nothing answered, nothing matched.
    assert result["n"] == 2 and result["exact_match"] == 0.0 and result["answered"] == 0.0
    assert [s["gold"] for s in result["samples"]] == ["... #### 72", "4"]
    for s in result["samples"]:  # greedy replies, cut at the end of turn or at 8 tokens
        assert s["finish"] in ("end_of_turn", "length") and "<|end|>" not in s["response"]

    items_file = tmp_path / "items.jsonl"
    items_file.write_text("\n".join(json.dumps(i) for i in items))
    assert eval_main(["--hf", str(tmp_path / "missing"), "--chain-of-thought", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}))
    assert eval_main(["--hf", str(tmp_path / "missing"), "--chain-of-thought", str(bad)]) == 2
    assert "item 0 must be {question: str, answer: str}" in capsys.readouterr().err


def test_cot_items_read_the_alpaca_layout_of_the_shipped_task(tmp_path):
    """data_prep.arithmetic's test.jsonl evaluates as it is: the question is the user turn that
    data_prep's `alpaca` source trains on (instruction, then a blank line and the input)."""
    assert make_task(["--out", str(tmp_path), "--train", "0", "--test", "3"]) == 0
    items = read_cot_items(str(tmp_path / "test.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    for item, row in zip(items, rows):
        assert item["question"] == conversations("alpaca", row)[0][0]["content"] == row["instruction"]
        assert item["answer"] == row["answer"]
    (tmp_path / "with_input.json").write_text(json.dumps([{"instruction": "Add.", "input": "2 and 3", "answer": "5"}]))
    assert read_cot_items(str(tmp_path / "with_input.json"))[0]["question"] == "Add.\n\n2 and 3"
