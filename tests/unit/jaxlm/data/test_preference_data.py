"""Preference pairs as data: the pair record, data_prep's hh_rlhf / pairs / alpaca_eval sources (masks
on the final response only, prompt truncation from the left), and the loader's chosen/rejected rows."""

import gzip
import json

import numpy as np
import pytest
import sentencepiece as spm

from data_prep import prepare
from data_prep.config import config_from_dict
from data_prep.errors import ConfigError
from data_prep.preference import hh_turns, pair_of, read_pairs
from data_prep.shards import keep_response
from data_prep.config import SourceConfig
from data_prep.stats import StageStats
from jaxlm.data import format as fmt
from jaxlm.data.chat import ChatError
from jaxlm.data.format import DataFormatError
from jaxlm.data.loader import build_loader
from jaxlm.data.pairs import REFERENCE_FIELD, build_pair_loader, pair_rows, sequence_row
from jaxlm.data.shards import DocumentSource, open_dataset
from tests.helpers import train_tokenizer

HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water and yeast.",
      "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: How do I bake bread?\n\nAssistant: No."}


def seq(tokens, mask):
    out = np.empty(len(tokens), fmt.MASKED_TOKEN)
    out["token"], out["mask"] = tokens, mask
    return out


def test_pair_record_round_trip_with_and_without_reference():
    dtype = fmt.token_dtype(300)
    rec = fmt.encode_pair_record([5, 6, 7], [0, 1, 1], [5, 9], [0, 1], dtype)
    pair = fmt.decode_record(rec, dtype, "pair")
    assert pair.chosen["token"].tolist() == [5, 6, 7] and pair.chosen["mask"].tolist() == [0, 1, 1]
    assert pair.rejected["token"].tolist() == [5, 9] and pair.rejected["mask"].tolist() == [0, 1]
    assert pair.reference is None
    with_ref = fmt.decode_pair_record(fmt.encode_pair_record([5, 6, 7], [0, 1, 1], [5, 9], [0, 1], dtype, (-1.5, -2.25)), dtype)
    assert with_ref.reference.tolist() == [-1.5, -2.25] and with_ref.chosen["token"].tolist() == [5, 6, 7]
    for bad in (rec[:-1], rec[:5], rec + b"\0"):
        with pytest.raises(ValueError):
            fmt.decode_pair_record(bad, dtype)


def test_hh_transcripts_become_prompt_and_final_responses():
    pair = pair_of("hh_rlhf", HH)
    assert pair["prompt"] == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
                              {"role": "user", "content": "How do I bake bread?"}]
    assert (pair["chosen"], pair["rejected"]) == ("Mix flour, water and yeast.", "No.")
    assert hh_turns("\n\nHuman: a\n\nAssistant:")[-1] == {"role": "assistant", "content": ""}
    with pytest.raises(ChatError, match="prompts_differ"):
        pair_of("hh_rlhf", {"chosen": HH["chosen"], "rejected": HH["rejected"].replace("Hi there", "Hey")})
    with pytest.raises(ChatError, match="empty_response"):
        pair_of("hh_rlhf", {"chosen": HH["chosen"], "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: "
                            "How do I bake bread?\n\nAssistant:"})
    with pytest.raises(ChatError, match="end with the assistant"):
        pair_of("hh_rlhf", {"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"})
    with pytest.raises(ChatError):
        pair_of("hh_rlhf", {"chosen": "no turns", "rejected": "no turns"})


def test_generic_pairs_and_alpaca_eval_judgements():
    user = [{"role": "user", "content": "2+2?"}]
    assert pair_of("pairs", {"prompt": "2+2?", "chosen": "4", "rejected": "5"}) == {"prompt": user, "chosen": "4", "rejected": "5"}
    assert pair_of("pairs", {"messages": user, "chosen": "4", "rejected": "5"})["prompt"] == user
    conv = pair_of("pairs", {"chosen": user + [{"role": "assistant", "content": "4"}],
                             "rejected": user + [{"role": "assistant", "content": "5"}]})
    assert conv == {"prompt": user, "chosen": "4", "rejected": "5"}
    explicit = pair_of("pairs", {"prompt": "2+2?", "chosen": [{"role": "assistant", "content": "4"}],
                                 "rejected": [{"role": "assistant", "content": "5"}]})
    assert explicit == conv
    with pytest.raises(ChatError, match="share"):
        pair_of("pairs", {"chosen": user + [{"role": "assistant", "content": "4"}],
                          "rejected": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]})
    with pytest.raises(ChatError, match="needs 'prompt'"):
        pair_of("pairs", {"chosen": "4", "rejected": "5"})
    judged = {"instruction": "Name a colour.", "output_1": "Blue.", "output_2": "Seven.", "preference": 1}
    assert pair_of("alpaca_eval", judged)["chosen"] == "Blue."
    assert pair_of("alpaca_eval", {**judged, "preference": 2})["chosen"] == "Seven."
    for unjudged in (0, 1.5, None):
        with pytest.raises(ChatError, match="no_preference"):
            pair_of("alpaca_eval", {**judged, "preference": unjudged})


def test_keep_response_drops_the_prompt_start_first():
    ids, mask = np.arange(20), np.array([0] * 16 + [1] * 4)
    k, m = keep_response(ids, mask, 10)  # 4 response tokens fit beside the last 6 prompt tokens
    assert k.tolist() == list(range(10, 20)) and m.sum() == 4
    k, m = keep_response(ids[4:], mask[4:], 20)  # it fits: unchanged
    assert k.tolist() == list(range(4, 20))
    ids, mask = np.arange(20), np.array([0] * 4 + [1] * 16)
    k, m = keep_response(ids, mask, 10)  # a long response: the prompt keeps at least half the limit
    assert k.tolist() == list(range(0, 10)) and m.tolist() == [0] * 4 + [1] * 6


@pytest.fixture(scope="module")
def pair_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    with gzip.open(root / "hh.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(12):
            f.write(json.dumps({"chosen": HH["chosen"] + f" Step {i}.", "rejected": HH["rejected"] + f" {i}"}) + "\n")
        f.write(json.dumps({"chosen": HH["chosen"], "rejected": HH["rejected"].replace("Hi there", "Yo")}) + "\n")
    (root / "gen.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}",
                                                        "rejected": f"{2 * i + 1}"}) + "\n" for i in range(12)) + "{bad\n")
    (root / "ae.json").write_text(json.dumps([{"instruction": f"Say {i}.", "output_1": f"{i}", "output_2": "no",
                                               "preference": 1 + i % 2} for i in range(6)] +
                                             [{"instruction": "x", "output_1": "a", "output_2": "b", "preference": 0}]))
    tok = train_tokenizer(root / "tok.model", chat_tokens=False)
    cfg = config_from_dict({"output": str(root / "out"), "split": {"val_fraction": 0.25}, "workers": 1,
                            "sources": [{"name": "hh", "type": "hh_rlhf", "paths": [str(root / "hh.jsonl.gz")]},
                                        {"name": "gen", "type": "pairs", "paths": [str(root / "gen.jsonl")]},
                                        {"name": "ae", "type": "alpaca_eval", "paths": [str(root / "ae.json")]}],
                            "tokenizer": {"path": tok}, "chat": {"max_tokens": 64}})
    manifest = prepare(cfg, log=lambda _: None)
    return root / "out", manifest


def test_data_prep_writes_pair_records_masked_on_the_final_response(pair_dataset):
    out, manifest = pair_dataset
    assert manifest["record_kind"] == "pair" and manifest["chat"]["max_tokens"] == 64
    assert manifest["chat"]["examples_truncated"] == 12  # HH's longer chosen transcripts: their prompt's start goes
    read = next(s for s in manifest["stages"] if s["stage"] == "read")
    assert read["removed"] == {"read:prompts_differ": 1, "read:malformed_json": 1, "read:no_preference": 1}
    assert sum(s["documents"] for s in manifest["splits"].values()) == 12 + 12 + 6
    info = open_dataset(str(out))
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    seen = {"hh": 0, "gen": 0, "ae": 0}
    for split in ("train", "val"):
        docs = DocumentSource(info, split)
        for i in range(len(docs)):
            pair = docs[i]
            for side in (pair.chosen, pair.rejected):
                assert len(side) <= 64
                response = sp.decode(side["token"][side["mask"] == 1].tolist())
                prompt = sp.decode(side["token"][side["mask"] == 0].tolist())
                assert response.endswith("<|end|>") and "<|assistant|>" not in response
                assert prompt.endswith("<|assistant|>\n") and np.all(np.diff(side["mask"].astype(int)) >= 0)
                if "Hello." in prompt:  # an earlier assistant turn of HH is prompt, never trained
                    seen["hh"] += 1
                    assert "Hello." not in response
                    assert prompt.startswith("<|user|>\nHi there") == (len(side) < 64)
            chosen = sp.decode(pair.chosen["token"][pair.chosen["mask"] == 1].tolist())
            if "What is" in sp.decode(pair.chosen["token"].tolist()):
                seen["gen"] += 1
            if "Say " in sp.decode(pair.chosen["token"].tolist()):
                seen["ae"] += 1
                assert chosen.startswith("no") == ("Say 1." in sp.decode(pair.chosen["token"].tolist())
                                                   or "Say 3." in sp.decode(pair.chosen["token"].tolist())
                                                   or "Say 5." in sp.decode(pair.chosen["token"].tolist()))
    assert seen == {"hh": 24, "gen": 12, "ae": 6}


def test_pair_loader_rows_side_by_side_padding_and_resume(pair_dataset):
    out, _ = pair_dataset
    rows = sequence_row(seq([4, 5, 6, 7], [0, 0, 1, 1]), 6)
    assert rows["inputs"].tolist() == [4, 5, 6, 7, 0, 0] and rows["targets"].tolist() == [5, 6, 7, 0, 0, 0]
    assert rows["loss_mask"].tolist() == [0, 1, 1, 0, 0, 0] and rows["segment_ids"].tolist() == [1, 1, 1, 1, 0, 0]
    batch = pair_rows([fmt.Pair(seq([1, 2, 3], [0, 1, 1]), seq([1, 9], [0, 1]), np.array([-1.0, -2.0], np.float32))],
                      pairs_per_batch=2, seq_len=4, reference=True)
    assert batch["inputs"].tolist() == [[1, 2, 3, 0], [1, 9, 0, 0], [0] * 4, [0] * 4]
    assert batch[REFERENCE_FIELD].tolist() == [[-1, 0, 0, 0], [-2, 0, 0, 0], [0] * 4, [0] * 4]

    info = open_dataset(str(out))
    val = DocumentSource(info, "val")
    loader = build_pair_loader([(str(out), 1.0)], "val", seq_len=64, batch_rows=4, num_epochs=1, shuffle=False, prefetch=0)
    batches = list(loader)
    assert len(batches) == -(-len(val) // 2)
    first = batches[0]
    assert first["inputs"][0][:len(val[0].chosen)].tolist() == val[0].chosen["token"].tolist()[:64]
    assert first["inputs"][1][:len(val[0].rejected)].tolist() == val[0].rejected["token"].tolist()[:64]
    assert REFERENCE_FIELD not in first
    # the train stream resumes exactly from a saved state
    def train_loader():
        return build_pair_loader([(str(out), 1.0)], "train", seq_len=32, batch_rows=4, seed=3, prefetch=0)
    a = train_loader()
    for _ in range(3):
        next(a)
    state = a.get_state()
    want = [next(a) for _ in range(4)]
    b = train_loader()
    b.set_state(state)
    for w in want:
        got = next(b)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])
    a.close(), b.close()
    with pytest.raises(DataFormatError, match="preference pairs"):
        build_loader([(str(out), 1.0)], "train", seq_len=32, batch_rows=4)


def test_pair_config_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    base = {"output": str(tmp_path / "o"), "sources": [{"name": "p", "type": "pairs", "paths": [str(tmp_path / "a.jsonl")]}]}
    config_from_dict(base)
    with pytest.raises(ConfigError, match="holds pairs only"):
        config_from_dict({**base, "sources": base["sources"] + [
            {"name": "t", "type": "alpaca", "paths": [str(tmp_path / "a.jsonl")]}]})
    with pytest.raises(ConfigError, match="preference source"):
        config_from_dict({**base, "stages": [{"type": "unicode_fix"}]})


def test_real_hh_rlhf_and_alpaca_eval_files_parse(shared_data):
    stats = StageStats("read")
    hh = list(read_pairs(SourceConfig(name="hh", type="hh_rlhf"), str(shared_data / "pref/hh-rlhf/harmless-base/test.jsonl.gz"),
                         "hh", stats))
    assert len(hh) + sum(stats.removed.values()) == 2312  # the harmless-base test split
    assert len(hh) > 2250 and all(d.meta["pair"]["prompt"][-1]["role"] == "user" for d in hh)
    stats = StageStats("read")
    ae = list(read_pairs(SourceConfig(name="ae", type="alpaca_eval"),
                         str(shared_data / "pref/alpaca_eval/alpaca-7b_vs_davinci003_gpt4_annotations.json"), "ae", stats))
    assert len(ae) + stats.removed["read:no_preference"] == 805 and len(ae) == 789
