"""`jaxlm.sample --chat`: the prompt goes through the model's chat template (a run's dataset or an
exported folder's tokenizer_config.json), a reply stops at the end-of-turn token, turns chain."""

import json
import os

import pytest
import sentencepiece as spm

from data_prep import prepare
from data_prep.config import config_from_dict
from jaxlm.data.chat import dataset_template
from jaxlm.eval.chat import converse, hf_template, reply, workdir_template
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.loading import from_params, load_hf_dir
from jaxlm.export import export_run
from jaxlm.sample import main as sample_main
from tests.helpers import random_model, train_tokenizer

GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """An instruction dataset whose tokenizer grew the chat tokens onto a plain one."""
    root = tmp_path_factory.mktemp("chat")
    base = train_tokenizer(root / "base.model", chat_tokens=False)
    with open(root / "chat.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}) + "\n")
    out = str(root / "sft")
    prepare(config_from_dict({"output": out, "sources": [{"name": "c", "type": "chat", "paths": [str(root / "chat.jsonl")]}],
                              "split": {"val_fraction": 0.0}, "tokenizer": {"path": base}, "workers": 1}), log=lambda _: None)
    return out


def model(dataset, end_logit=None):
    """A tiny gpt2 run on `dataset`; with `end_logit` the end-of-turn token's logit is pinned to it
    (final norm gives a constant direction the unembedding reads), so replies end at once or never."""
    sp = spm.SentencePieceProcessor(model_file=os.path.join(dataset, "tokenizer.model"))
    config, params = random_model("gpt2", vocab_size=sp.vocab_size(), dataset=dataset, seed=1, tie_embeddings=False)
    if end_logit is not None:
        eot = sp.piece_to_id("<|end|>")
        params["final_norm"]["bias"] = params["final_norm"]["bias"].at[0].add(1.0)
        params["unembed"] = params["unembed"].at[0, eot].set(end_logit)
    return from_params(config, params), sp


def test_a_reply_stops_at_end_of_turn(dataset):
    em, sp = model(dataset, end_logit=100.0)
    template = workdir_template(em)
    out = reply(em, template, [[{"role": "user", "content": "Hi"}]], GREEDY)[0]
    assert out.finish_reason == "end_of_turn" and out.tokens == [] and out.text == ""
    em, _ = model(dataset, end_logit=-100.0)  # never ends: runs to max_new_tokens
    out = reply(em, template, [[{"role": "user", "content": "Hi"}]], GREEDY)[0]
    assert out.finish_reason == "length" and len(out.tokens) == 6
    assert sp.piece_to_id("<|end|>") not in out.tokens


def test_the_prompt_is_the_template_with_the_generation_prompt(dataset):
    em, sp = model(dataset)
    template = dataset_template(dataset)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is json?"}]
    ids = template.prompt_ids(sp, chat)
    assert sp.id_to_piece(ids[-2:]) == ["<|assistant|>", "\n"] or sp.decode(ids).endswith("<|assistant|>\n")
    ours = reply(em, template, [chat], GREEDY)[0]
    direct = Generator(em.graphdef, em.params, em.window, tokenizer=em.tokenizer,
                       eos_id=sp.piece_to_id("<|end|>")).generate_ids([ids], GREEDY)[0]
    assert ours.tokens == direct.tokens and len(ours.tokens) > 0


def test_turns_chain_and_the_exported_folder_chats_alike(dataset, tmp_path):
    em, sp = model(dataset)
    chats = converse(em, workdir_template(em), ["Hi", "And json?"], GREEDY,
                     history=[{"role": "system", "content": "Be brief."}], samples=2)
    assert [m["role"] for m in chats[0]] == ["system", "user", "assistant", "user", "assistant"]
    assert chats[0] == chats[1]  # greedy: both samples alike
    # The second reply was generated after the first: its prompt holds the first reply.
    second = reply(em, workdir_template(em), [chats[0][:4]], GREEDY)[0]
    assert second.text == chats[0][4]["content"]

    export_run(em.config, em.params, str(tmp_path / "hf"))
    hf = load_hf_dir(str(tmp_path / "hf"), window=em.window)
    template = hf_template(str(tmp_path / "hf"), hf)
    assert template.end_of_turn == "<|end|>"
    hf_chats = converse(hf, template, ["Hi", "And json?"], GREEDY, history=[{"role": "system", "content": "Be brief."}])
    assert hf_chats[0] == chats[0]


def test_sample_cli_chat(dataset, tmp_path, capsys):
    em, _ = model(dataset, end_logit=100.0)
    export_run(em.config, em.params, str(tmp_path / "hf"))
    messages = tmp_path / "m.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                    {"role": "user", "content": "Again?"}]))
    assert sample_main(["--hf", str(tmp_path / "hf"), "--chat", "--messages", str(messages), "--prompt", "Bye",
                        "--temperature", "0", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("[assistant] (end_of_turn)") == 2 and "[user]\nBye" in out and "Again?" not in out
    # A plain pre-training folder has no template: one clear message.
    with open(tmp_path / "hf" / "tokenizer_config.json") as f:
        config = json.load(f)
    del config["chat_template"]
    with open(tmp_path / "hf" / "tokenizer_config.json", "w") as f:
        json.dump(config, f)
    assert sample_main(["--hf", str(tmp_path / "hf"), "--chat", "--prompt", "Hi"]) == 2
    assert "no tokenizer_config.json `chat_template`" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert sample_main(["--hf", str(tmp_path / "hf"), "--chat", "--messages", str(bad)]) == 2
    assert "--messages" in capsys.readouterr().err


def test_default_reply_length_fits_a_short_context(dataset, tmp_path, capsys):
    """Without --max-new-tokens a reply may take half of a short context (here under 128 tokens)."""

    em, _ = model(dataset, end_logit=-100.0)  # never ends: runs to the default length
    assert em.window < 128
    export_run(em.config, em.params, str(tmp_path / "hf"))
    assert sample_main(["--hf", str(tmp_path / "hf"), "--chat", "--prompt", "Hi", "--temperature", "0"]) == 0
    assert "[assistant] (length)" in capsys.readouterr().out
    assert sample_main(["--hf", str(tmp_path / "hf"), "--prompt", "Hi", "--temperature", "0"]) == 0
    assert f"--- (length, {em.window // 2} tokens)" in capsys.readouterr().out


def test_chat_on_a_pretraining_run_is_refused(tmp_path):
    config, params = random_model("gpt2", vocab_size=96)
    em = from_params(config, params)
    with pytest.raises(EvalError, match="--chat needs a model tuned on an instruction dataset"):
        workdir_template(em)
