"""An exported instruction-tuned model's HF tokenizer applies the chat template to the same ids as jaxlm."""

import json
import os

import pytest
import sentencepiece as spm

transformers = pytest.importorskip("transformers")

from data_prep import prepare  # noqa: E402
from data_prep.config import config_from_dict  # noqa: E402
from jaxlm.data.chat import dataset_template  # noqa: E402
from jaxlm.export import export_run  # noqa: E402
from tests.helpers import random_model, train_tokenizer  # noqa: E402

CHATS = [
    [{"role": "user", "content": "What does `json.dumps` do?"},
     {"role": "assistant", "content": "Serialize obj to a JSON formatted str."}],
    [{"role": "system", "content": "Answer briefly.\n  Keep  spaces."},
     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And naïve café 日本語 😀?"}, {"role": "assistant", "content": "Text\n\ttoo."},
     {"role": "user", "content": "Thanks <s> </s>"}],
]


def ids_of(result):
    """apply_chat_template's ids whether it returns a list or a BatchEncoding (transformers 4 vs 5)."""
    return list(result["input_ids"]) if hasattr(result, "keys") else list(result)


def test_hf_apply_chat_template_matches_jaxlm(tmp_path):
    base = train_tokenizer(tmp_path / "base.model", chat_tokens=False)
    with open(tmp_path / "chat.jsonl", "w", encoding="utf-8") as f:
        for chat in CHATS:
            f.write(json.dumps({"messages": chat}) + "\n")
    data = str(tmp_path / "sft")
    prepare(config_from_dict({"output": data, "sources": [{"name": "c", "type": "chat", "paths": [str(tmp_path / "chat.jsonl")]}],
                              "split": {"val_fraction": 0.0}, "tokenizer": {"path": base}, "workers": 1}), log=lambda _: None)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(data, "tokenizer.model"))
    config, params = random_model(vocab_size=sp.vocab_size(), dataset=data)
    out = str(tmp_path / "hf")
    summary = export_run(config, params, out)
    assert summary["tokenizer"] is not None
    template = dataset_template(data)
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        assert json.load(f)["chat_template"] == template.source
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == [sp.piece_to_id("<|end|>"), sp.eos_id()]

    hf = transformers.AutoTokenizer.from_pretrained(out)
    for chat in CHATS:
        ids, _ = template.encode(sp, chat)
        assert ids_of(hf.apply_chat_template(chat, tokenize=True)) == ids.tolist()
        for k in range(1, len(chat) + 1):  # every prefix, as a prompt for the next assistant turn
            prompt = ids_of(hf.apply_chat_template(chat[:k], tokenize=True, add_generation_prompt=True))
            assert prompt == template.prompt_ids(sp, chat[:k])
    ids, mask = template.encode(sp, CHATS[1])
    response = [int(i) for i, m in zip(ids, mask) if m]
    assert hf.decode(response) == "4<|end|>Text\n\ttoo.<|end|>"
