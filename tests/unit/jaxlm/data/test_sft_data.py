"""Instruction data: chat template masks, record format versions, masked packing, data_prep instruction sources."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from flax import nnx

from data_prep import prepare
from data_prep.config import config_from_dict, load_config
from data_prep.errors import ConfigError
from data_prep.instruct import conversations, first_doctest, module_name
from jaxlm.config import ModelConfig
from jaxlm.data import format as fmt
from jaxlm.data.chat import ChatError, ChatTemplate, ChatTemplateError, dataset_template
from jaxlm.data.loader import build_loader
from jaxlm.data.shards import DocumentSource, open_dataset
from jaxlm.eval.contamination import dataset_texts
from jaxlm.model import Transformer
from tests.helpers import REPO, random_docs, train_tokenizer, write_dataset

CHAT = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What does `json.dumps` do?"},
    {"role": "assistant", "content": "Serialize obj to a JSON formatted str."},
    {"role": "user", "content": "And naïve café 日本語?"},
    {"role": "assistant", "content": "Text 😀 𝔘 too."},  # 𝔘: not a piece, byte-fallback pieces
]


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    path = train_tokenizer(tmp_path_factory.mktemp("tok") / "chat.model")
    return spm.SentencePieceProcessor(model_file=path)


def runs(mask):
    """[start, end) of each run of ones."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


# --- the chat template -------------------------------------------------------------------------


def test_mask_covers_exactly_each_assistant_turn_and_its_end_of_turn(sp):
    ids, mask = ChatTemplate().encode(sp, CHAT)
    assert ids.tolist() == sp.encode(ChatTemplate().render(CHAT))  # one tokenization of the whole text
    spans = runs(mask)
    assert [sp.decode(ids[s:e].tolist()) for s, e in spans] == [
        "Serialize obj to a JSON formatted str.<|end|>", "Text 😀 𝔘 too.<|end|>"]
    end = sp.piece_to_id("<|end|>")
    assert [int(ids[e - 1]) for _, e in spans] == [end, end]  # the end-of-turn token is trained
    untrained = sp.decode(ids[mask == 0].tolist())
    for role in ("<|system|>", "<|user|>", "<|assistant|>", "You answer in one line.", "What does", "naïve café 日本語?"):
        assert role in untrained
    # the prompt for generation is exactly the text before the first response
    prompt = ChatTemplate().prompt_ids(sp, CHAT[:2])
    assert prompt == ids[: spans[0][0]].tolist()


def test_conversation_without_response_has_no_trained_token_and_bad_messages_fail(sp):
    _, mask = ChatTemplate().encode(sp, CHAT[:2])
    assert mask.sum() == 0
    with pytest.raises(ChatError, match="message 1"):
        ChatTemplate().encode(sp, [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}])
    with pytest.raises(ChatError, match="system message may only come first"):
        ChatTemplate().encode(sp, [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}])


def test_a_template_that_is_not_a_concatenation_of_turns_is_refused(sp):
    reversed_turns = "{% for m in messages | reverse %}{{ m['content'] }}<|end|>{% endfor %}"
    with pytest.raises(ChatTemplateError, match="prefix"):
        ChatTemplate(source=reversed_turns).encode(sp, CHAT)


# --- record format versions --------------------------------------------------------------------


def test_version_1_datasets_read_exactly_as_before(tmp_path):
    docs = random_docs(30, seed=3, max_len=40)
    v2 = write_dataset(tmp_path / "v2", {"train": docs, "val": docs[:3]})
    v1 = write_dataset(tmp_path / "v1", {"train": docs, "val": docs[:3]})
    manifest_path = os.path.join(v1, fmt.MANIFEST)
    with open(manifest_path) as f:
        manifest = json.load(f)
    del manifest["record_kind"]
    manifest["format_version"] = 1  # what the previous data_prep wrote
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    source = DocumentSource(open_dataset(v1), "train")
    assert open_dataset(v1).record_kind == "tokens"
    assert all(np.array_equal(source[i], d) and source[i].dtype == np.uint16 for i, d in enumerate(docs))
    a = build_loader([(v1, 1.0)], seq_len=16, batch_rows=3, num_epochs=1, prefetch=0)
    b = build_loader([(v2, 1.0)], seq_len=16, batch_rows=3, num_epochs=1, prefetch=0)
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    manifest["format_version"] = 3
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(fmt.DataFormatError, match="format_version 3"):
        open_dataset(v1)


def test_masked_record_round_trip_and_corrupt_length():
    tokens, mask = np.array([5, 70000, 3]), np.array([0, 1, 1])
    record = fmt.encode_masked_record(tokens, mask, np.dtype("<u4"))
    out = fmt.decode_record(record, np.dtype("<u4"), "tokens_mask")
    assert out["token"].tolist() == [5, 70000, 3] and out["mask"].tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="mask bytes"):
        fmt.decode_record(record[:-1], np.dtype("<u4"), "tokens_mask")


# --- packing -----------------------------------------------------------------------------------


def masked(tokens, mask):
    out = np.empty(len(tokens), fmt.MASKED_TOKEN)
    out["token"], out["mask"] = tokens, mask
    return out


def test_loader_trains_on_response_targets_only_and_keeps_examples_whole(tmp_path):
    rng = np.random.default_rng(0)
    examples = []
    for i in range(12):
        n = int(rng.integers(4, 14)) if i != 5 else 30  # example 5 is longer than the context
        prompt = int(rng.integers(1, n - 1))
        examples.append(masked(rng.integers(10, 500, n), np.r_[np.zeros(prompt), np.ones(n - prompt)]))
    root = write_dataset(tmp_path / "sft", {"train": examples, "val": examples[:2]})
    assert open_dataset(root).record_kind == "tokens_mask"
    seq_len = 16
    batches = list(build_loader([(root, 1.0)], seq_len=seq_len, batch_rows=2, num_epochs=1, shuffle=False, prefetch=0))
    rows = [{k: b[k][r] for k in b} for b in batches for r in range(2)]
    seen = []
    for row in rows:
        for seg in range(1, row["segment_ids"].max() + 1):
            at = np.flatnonzero(row["segment_ids"] == seg)
            assert np.array_equal(at, np.arange(at[0], at[-1] + 1)) and np.array_equal(row["positions"][at], np.arange(len(at)))
            seen.append((row["inputs"][at], row["targets"][at], row["loss_mask"][at]))
        assert row["loss_mask"][row["segment_ids"] == 0].sum() == 0
    assert len(seen) == len(examples)  # every example in one piece: none split across rows
    for ex, (inputs, targets, loss) in zip(examples, seen):
        ex = ex[:seq_len]  # the long one is truncated to the context, tail dropped
        n = len(ex)
        assert np.array_equal(inputs, ex["token"][:n])
        assert np.array_equal(targets[: n - 1], ex["token"][1:n])
        # trained exactly where the target is a response token; never the example's last input
        assert np.array_equal(loss, np.r_[ex["mask"][1:n], 0])


def test_masked_stream_resumes_exactly(tmp_path):
    rng = np.random.default_rng(1)
    examples = [masked(rng.integers(10, 500, n), rng.integers(0, 2, n)) for n in rng.integers(3, 12, 40)]
    root = write_dataset(tmp_path / "sft", {"train": examples, "val": examples[:2]})
    whole = list(build_loader([(root, 1.0)], seq_len=16, batch_rows=2, num_epochs=2, seed=4, prefetch=0))
    first = build_loader([(root, 1.0)], seq_len=16, batch_rows=2, num_epochs=2, seed=4, prefetch=0)
    for _ in range(5):
        next(first)
    resumed = build_loader([(root, 1.0)], seq_len=16, batch_rows=2, num_epochs=2, seed=4, prefetch=0)
    resumed.set_state(first.get_state())
    rest = list(resumed)
    assert len(rest) == len(whole) - 5
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(rest, whole[5:]) for k in a)


def test_pretraining_text_mixed_into_instruction_data_is_trained_on_every_token(tmp_path):
    text = write_dataset(tmp_path / "text", {"train": [np.arange(100, 110)], "val": [np.arange(5)]}, shards=1)
    sft = write_dataset(tmp_path / "sft", {"train": [masked(np.arange(10, 16), [0, 0, 0, 1, 1, 1])], "val": []}, shards=1)
    batch = next(iter(build_loader([(text, 1.0), (sft, 1.0)], seq_len=20, batch_rows=1, num_epochs=1, shuffle=False,
                                   prefetch=0)))
    loss, seg = batch["loss_mask"][0], batch["segment_ids"][0]
    assert seg.tolist()[:16] == [1] * 10 + [2] * 6  # whole examples: the text document, then the conversation
    assert loss.tolist()[:16] == [1] * 9 + [0] + [0, 0, 1, 1, 1, 0]


def test_packed_examples_do_not_see_each_other_in_the_model(tmp_path):
    a = masked(np.arange(10, 17), [0, 0, 0, 1, 1, 1, 1])
    b = masked(np.arange(30, 36), [0, 0, 1, 1, 1, 1])
    c = masked(np.arange(50, 55), [0, 1, 1, 1, 1])
    batch = {}
    for name, first in (("same", a), ("changed", masked(np.arange(40, 47), a["mask"]))):
        root = write_dataset(tmp_path / name, {"train": [first, b, c], "val": [b]}, shards=1)
        batch[name] = next(iter(build_loader([(root, 1.0)], seq_len=24, batch_rows=1, num_epochs=1, shuffle=False, prefetch=0)))
    row = batch["same"]
    assert row["segment_ids"][0].tolist()[:18] == [1] * 7 + [2] * 6 + [3] * 5
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=24), rngs=nnx.Rngs(0))

    def logits(b):
        return np.asarray(model(jnp.asarray(b["inputs"]), jnp.asarray(b["positions"]), jnp.asarray(b["segment_ids"])))

    same, changed = logits(batch["same"]), logits(batch["changed"])
    assert not np.allclose(same[0, :7], changed[0, :7])
    np.testing.assert_array_equal(same[0, 7:18], changed[0, 7:18])  # examples 2 and 3 are untouched


# --- data_prep ---------------------------------------------------------------------------------


def write_instruction_files(root):
    files = {
        "alpaca.json": json.dumps([{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
                                   {"instruction": "Name a colour.", "input": "", "output": "Blue."},
                                   {"instruction": "Broken", "input": ""}]),
        "seeds.jsonl": json.dumps({"instruction": "Double it.", "instances": [{"input": "4", "output": "8"},
                                                                              {"input": "5", "output": "10"}]}),
        "chat.jsonl": "\n".join([json.dumps({"messages": CHAT}),
                                 json.dumps({"turns": ["Write a poem.", "Shorter."]}),  # prompts only
                                 json.dumps({"turns": ["2+2?", "3+3?"], "reference": ["4", "6"]})]),
        "cot.jsonl": "\n".join([json.dumps({"question": "Tom has 3 apples and eats 1. How many?",
                                            "answer": "He has 3 - 1 = 2 left.\n#### 2"}),
                                json.dumps({"question": "Q?", "rationale": "Because.", "answer": "7"}),
                                json.dumps({"question": "Q?", "answer": "no marker"})]),
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return [{"name": n.split(".")[0], "type": t, "paths": [str(root / n)]} for n, t in
            (("alpaca.json", "alpaca"), ("seeds.jsonl", "self_instruct"), ("chat.jsonl", "chat"), ("cot.jsonl", "cot"))]


def test_sources_build_the_expected_conversations():
    assert conversations("alpaca", {"instruction": "Do it.", "input": "x", "output": "y"}) == [
        [{"role": "user", "content": "Do it.\n\nx"}, {"role": "assistant", "content": "y"}]]
    assert conversations("cot", {"question": "Q", "rationale": "R", "answer": "4"})[0][1]["content"] == "R\n#### 4"
    assert [len(c) for c in conversations("self_instruct", {"instruction": "I", "instances": [
        {"input": "", "output": "a"}, {"input": "b", "output": "c"}]})] == [2, 2]
    assert conversations("chat", {"turns": ["a", "b"], "reference": ["c", "d"]})[0][-1] == {"role": "assistant", "content": "d"}
    with pytest.raises(ChatError):
        conversations("cot", {"question": "Q", "answer": "no final answer line"})


def test_data_prep_writes_masked_records_with_an_existing_tokenizer_grown_safely(tmp_path):
    base = train_tokenizer(tmp_path / "base.model", chat_tokens=False)
    old = spm.SentencePieceProcessor(model_file=base)
    sources = write_instruction_files(tmp_path)
    cfg = config_from_dict({"output": str(tmp_path / "out"), "sources": sources, "split": {"val_fraction": 0.0},
                            "tokenizer": {"path": base}, "chat": {"max_tokens": 40}, "workers": 1})
    manifest = prepare(cfg, log=lambda _: None)
    out = str(tmp_path / "out")
    new = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    # the chat tokens are appended after the old pieces: old ids and old encodings unchanged
    assert manifest["tokenizer_training"]["added_pieces"] == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert [new.piece_to_id(p) for p in manifest["tokenizer_training"]["added_pieces"]] == list(range(old.vocab_size(), old.vocab_size() + 4))
    assert [new.id_to_piece(i) for i in range(old.vocab_size())] == [old.id_to_piece(i) for i in range(old.vocab_size())]
    text = "The capital of France is Paris.\n  naïve 😀"
    assert new.encode(text) == old.encode(text)
    assert manifest["record_kind"] == "tokens_mask" and manifest["format_version"] == 2
    read = manifest["stages"][0]["removed"]
    assert read == {"read:malformed_example": 2, "read:no_response": 1}
    template = dataset_template(out)
    info = open_dataset(out)
    docs = DocumentSource(info, "train")
    assert len(docs) == manifest["splits"]["train"]["documents"]
    responses = set()
    for i in range(len(docs)):
        rec = docs[i]
        assert len(rec) <= 40 and rec["mask"].any()
        for s, e in runs(rec["mask"]):
            responses.add(new.decode(rec["token"][s:e].tolist()))
    assert {"5<|end|>", "Blue.<|end|>", "8<|end|>", "10<|end|>", "4<|end|>", "6<|end|>", "Because.\n#### 7<|end|>"} <= responses
    # the long chat was cut to 40 tokens (its second answer lost), and counted
    chat = manifest["chat"]
    assert chat["examples_truncated"] >= 1 and chat["max_tokens"] == 40 and chat["end_of_turn"] == "<|end|>"
    assert chat["trained_tokens"] == sum(int(docs[i]["mask"].sum()) for i in range(len(docs)))
    ids, mask = template.encode(new, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    assert any(np.array_equal(docs[i]["token"][: len(ids)], ids) for i in range(len(docs)))
    # readers of decoded text (contamination index, perplexity, export checks) see the conversations
    texts = list(dataset_texts(out, "train"))
    assert "<|user|>\nAdd the numbers.\n\n2 and 3<|end|><|assistant|>\n5<|end|>" in texts


def test_text_rewriting_stages_are_refused_on_instruction_sources(tmp_path):
    sources = write_instruction_files(tmp_path)
    base = {"output": str(tmp_path / "o"), "sources": sources}
    with pytest.raises(ConfigError, match="rewrites text"):
        config_from_dict({**base, "stages": [{"type": "unicode_fix"}]})
    with pytest.raises(ConfigError, match="policy: drop"):
        config_from_dict({**base, "stages": [{"type": "decontaminate", "eval_sets": {"x": str(tmp_path / "cot.jsonl")},
                                              "policy": "cut"}]})
    config_from_dict({**base, "stages": [{"type": "exact_dedup"}]})  # whole-example stages are fine


# --- the embedded instruction set ----------------------------------------------------------------


def test_doctest_and_module_names():
    assert module_name(os.path.join("email", "mime", "text.py")) == "email.mime.text"
    assert module_name(os.path.join("json", "__init__.py")) == "json"
    doc = "Return x.\n\n    >>> f(2)\n    4\n    >>> f(\n    ...   3)\n    9\n\nMore text."
    assert first_doctest(doc) == ">>> f(2)\n4\n>>> f(\n...   3)\n9"


def test_embedded_set_holds_out_whole_modules(tmp_path):
    """The shipped sft_demo config on a sample of the standard library, with a stand-in base tokenizer."""
    base = train_tokenizer(tmp_path / "base.model", chat_tokens=False)
    out = str(tmp_path / "py")
    cfg = load_config(os.path.join(REPO, "data_prep", "configs", "sft_demo.yaml"),
                      [f"output={out}", f"tokenizer.path={base}", "sources.stdlib_qa.max_bytes=400000",
                       "split.val_fraction=0.3", "workers=1"])
    manifest = prepare(cfg, log=lambda _: None)
    assert manifest["chat"]["max_tokens"] == 128 and manifest["tokenizer"]["vocab_size"] == 504
    spp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    info = open_dataset(out)
    modules = {}
    for split in ("train", "val"):
        docs = DocumentSource(info, split)
        modules[split] = set()
        for i in range(len(docs)):
            text = spp.decode(docs[i]["token"].tolist())
            assert text.startswith("<|user|>\n") and "<|end|><|assistant|>\n" in text
            assert text.endswith("<|end|>") or len(docs[i]) == 128  # whole, or cut at chat.max_tokens
            name = text.split("`")[1]  # the question names `module.name`
            modules[split].add(name.split(".")[0])
    assert modules["train"] and modules["val"]
    assert not modules["train"] & modules["val"]


def test_real_instruction_recipe(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # its paths are relative to the repository root (../shared/data/...)
    base = train_tokenizer(tmp_path / "base.model", chat_tokens=False)
    cfg = load_config(os.path.join("data_prep", "configs", "sft_instruct.yaml"),
                      [f"output={tmp_path / 'real'}", f"tokenizer.path={base}", "workers=1"])
    manifest = prepare(cfg, log=lambda _: None)
    per_source = {s["name"]: s["splits"] for s in manifest["sources"]}
    assert per_source["user_oriented"]["train"]["documents"] == 0 and per_source["mt_bench"]["train"]["documents"] == 0
    assert per_source["user_oriented"]["val"]["documents"] > 200 and per_source["mt_bench"]["val"]["documents"] > 0
    assert per_source["alpaca"]["train"]["documents"] > 150
    assert manifest["stages"][0]["removed"]["read:no_response"] == 41  # MT-Bench questions without references
