"""Rounds with real models: responses are generated once, up front (with a progress bar), equal what
jaxlm.eval's generator gives for the same prompts, go through the model's chat template when it
ships one, and a served round over a trained workdir holds the model's responses."""

import json
import os
import shutil
import sqlite3

import pytest

from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.loading import load_hf_dir
from jaxlm.humaneval.chat import ChatFormat, find_chat_format, model_input
from jaxlm.humaneval.errors import HumanEvalError
from jaxlm.humaneval.inputs import Prompt, read_prompts
from jaxlm.humaneval.setup_round import open_round, parse_sources
from jaxlm.humaneval.store import Store
from jaxlm.interop import export_hf
from tests.helpers import Server, free_port, get, make_tokenizer_dir, random_params, tiny_config, train_on_corpus

TEMPLATE = ("{% for m in messages %}{{ m.role[0] }}:{{ m.content }}\n{% endfor %}"  # short: one prompt length bucket
            "{% if add_generation_prompt %}a:{% endif %}")
GREEDY = dict(max_new_tokens=8, temperature=0.0, top_k=0, top_p=1.0, stop=[], seed=0)  # one compiled decoder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random model exported as a transformers folder, and a copy of it with a chat template."""
    root = tmp_path_factory.mktemp("models")
    plain = hf_folder(root / "plain", make_tokenizer_dir(str(root / "tok")), seed=0)
    shutil.copytree(plain, root / "chat")
    (root / "chat" / "chat_template.jinja").write_text(TEMPLATE)
    return plain, str(root / "chat")


def hf_folder(path, tok_dir, seed):
    cfg = tiny_config(seq_len=64, model={"vocab_size": 360, "init_std": 0.2}).model
    _, _, params = random_params(cfg, seed)
    export_hf(cfg, params, str(path), eos_id=2)
    shutil.copy(os.path.join(tok_dir, "tokenizer.model"), path / "tokenizer.model")
    return str(path)


def stored_responses(db):
    con = sqlite3.connect(db)
    rows = con.execute("SELECT s.name, r.prompt_id, r.sample, r.text FROM responses r JOIN systems s "
                       "ON s.id = r.system_id ORDER BY s.name, r.prompt_id, r.sample").fetchall()
    con.close()
    out = {}
    for name, p, k, text in rows:
        out.setdefault(name, {}).setdefault(p, []).append(text)
    return out


def test_models_generate_up_front_through_their_template(models, tmp_path, capsys):
    plain, chat = models
    chat_prompt = {"messages": [{"role": "user", "content": "The fox"}]}
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(x) for x in (
        {"prompt": "The quick brown"}, {"prompt": "def fib(n):"}, chat_prompt)) + "\n")
    prompts = read_prompts(str(tmp_path / "prompts.jsonl"))
    store = Store(str(tmp_path / "round.db"))
    assert open_round(store, parse_sources(plain, chat, [], []), str(tmp_path / "prompts.jsonl"), 1, 0.5, 0, GREEDY)
    assert "generating plain" in capsys.readouterr().err  # the progress bar

    got = stored_responses(store.path)
    assert find_chat_format(plain) is None and find_chat_format(chat) == ChatFormat(TEMPLATE)
    for path, template in ((plain, None), (chat, ChatFormat(TEMPLATE))):
        em = load_hf_dir(path)
        inputs = [model_input(p, template) for p in prompts]
        generator = Generator(em.graphdef, em.params, em.window, tokenizer=em.tokenizer)
        want = [g.text for g in generator.generate(inputs, SamplingConfig(max_new_tokens=8))]
        assert [got[os.path.basename(path)][i][0] for i in range(3)] == want
    fmt = ChatFormat(TEMPLATE)
    assert model_input(prompts[2], fmt) == "u:The fox\na:"
    assert model_input(prompts[0], fmt) == "u:The quick brown\na:"
    system = Prompt("x", ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}))
    assert model_input(system, fmt) == "s:Be brief.\nu:Hi\na:"
    assert model_input(prompts[0], None) == "The quick brown"
    assert len(set(got["plain"][i][0] for i in range(3))) > 1  # real, prompt-dependent output
    assert got["chat"][0] != got["plain"][0]  # the same weights, given the template's text


def test_samples_differ_and_greedy_samples_are_refused(models, tmp_path):
    plain, _ = models
    (tmp_path / "p.txt").write_text("The quick brown\nA man is\n")
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps({"prompt": p, "response": f"ref {p} {k}"}) + "\n"
                                                for p in ("The quick brown", "A man is") for k in range(3)))
    sources = parse_sources(plain, str(tmp_path / "ref.jsonl"), [], [])
    with pytest.raises(HumanEvalError, match="same response every time"):
        open_round(Store(str(tmp_path / "g.db")), sources, str(tmp_path / "p.txt"), 3, 0.2, 0, GREEDY)
    store = Store(str(tmp_path / "s.db"))
    open_round(store, sources, str(tmp_path / "p.txt"), 3, 0.2, 0, dict(GREEDY, temperature=1.0))
    got = stored_responses(store.path)
    assert all(len(set(samples)) > 1 for samples in got["plain"].values())  # samples of one prompt differ
    assert got["ref"][0] == ["ref The quick brown 0", "ref The quick brown 1", "ref The quick brown 2"]
    assert store.counts()["items"] == 6


def test_chat_format_from_a_dataset_manifest_or_tokenizer_config(tmp_path):
    (tmp_path / "turns.jinja").write_text(TEMPLATE)
    (tmp_path / "manifest.json").write_text(json.dumps({"chat": {"template": "turns.jinja", "end_of_turn": "<|end|>"}}))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0].content }}!"}))
    assert find_chat_format(str(tmp_path / "hf"), str(tmp_path)) == ChatFormat("{{ messages[0].content }}!")
    assert find_chat_format(str(tmp_path)) == ChatFormat(TEMPLATE, "<|end|>")
    assert model_input(Prompt("hey"), find_chat_format(str(tmp_path / "hf"))) == "hey!"


@pytest.mark.slow
def test_serve_generates_from_a_trained_workdir(tmp_path, jax_cache):
    """A real training run (a subprocess) against a reference file, through `serve` as users run it."""
    train_on_corpus(tmp_path, jax_cache)
    (tmp_path / "p.txt").write_text("The quick brown\ndef fib(n):\n")
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps({"prompt": p, "response": "reference"}) + "\n"
                                                for p in ("The quick brown", "def fib(n):")))
    db = tmp_path / "round.db"
    server = Server(["--a", str(tmp_path / "work"), "--b", str(tmp_path / "ref.jsonl"), "--prompts",
                     str(tmp_path / "p.txt"), "--db", str(db), "--max-new-tokens", "8", "--rater", "r"],
                    free_port(), tmp_path / "server.log", timeout=300)
    try:
        assert "generating work" in server.output() and "new round" in server.output()
        status, page = get(server.links["rater r"])
        assert status == 200 and "reference" in page
    finally:
        server.stop()
    got = stored_responses(str(db))
    assert set(got) == {"work", "ref"} and len(got["work"]) == 2
