"""data_prep end to end on tiny corpora: exact round trip through real shards, determinism, manifest."""

import hashlib
import json
import os

import numpy as np
import pytest
import sentencepiece as spm
from array_record.python.array_record_module import ArrayRecordReader

from data_prep import prepare
from data_prep.__main__ import main
from data_prep.config import config_from_dict
from data_prep.errors import DataPrepError, SourceError
from data_prep.split import hash_fraction
from jaxlm.data import format

# the documents a round trip must survive: empty, emoji, odd whitespace, specials as text, > 100 kB lines
SPECIAL_DOCS = [
    "",
    "hello world",
    "emoji 😀🎉👩‍👩‍👧 naïve café 日本語 עברית \u200b zero-width, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "  leading and trailing spaces  \t\ttabs\n\n\n\r\nwindows line\r\n   ",
    "literal specials: <s> </s> <pad> <unk> \ufffd",
    "\n",
    " ",
    "x" * 150_000,
    " ".join(f"word{i}" for i in range(30_000)),  # ~250 kB, one line
    "def f(x):\n    if x:\n        return {'a': [1, 2, 3]}\n\treturn None\n",
    "".join(chr(c) for c in range(0x2600, 0x2700)),
]


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def make_cfg(tmp_path, out="out", texts=SPECIAL_DOCS, overrides=(), **extra):
    write_jsonl(tmp_path / "docs.jsonl", texts)
    raw = {
        "output": str(tmp_path / out),
        "sources": [{"name": "prose", "type": "pydoc_topics"},
                    {"name": "docs", "type": "jsonl", "paths": [str(tmp_path / "docs.jsonl")]}],
        "split": {"val_fraction": 0.4},
        "tokenizer": {"vocab_size": 1000},
        "shards": {"target_mb": 0.05},
        "workers": 1,
        **extra,
    }
    return config_from_dict(raw, list(overrides))


def quiet(_):
    pass


def read_shard(path, dtype):
    reader = ArrayRecordReader(path)
    records = [format.decode_record(r, dtype) for r in reader.read_all()]
    reader.close()
    return records


def shard_records(manifest, out, split, source):
    """Records of one (split, source) group, in document order (they are dealt round-robin over its shards)."""
    dtype = np.dtype(manifest["dtype"])
    shards = [read_shard(os.path.join(out, s["path"]), dtype) for s in manifest["splits"][split]["shards"] if s["source"] == source]
    n = sum(map(len, shards))
    return [shards[i % len(shards)][i // len(shards)] for i in range(n)]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_round_trip_is_exact_through_shards(tmp_path, model_type):
    cfg = make_cfg(tmp_path, overrides=[f"tokenizer.model_type={model_type}"])
    manifest = prepare(cfg, log=quiet)
    out = cfg.output
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    eos = manifest["tokenizer"]["eos_id"]
    # the split is the documented hash of (seed, id); ids are "<source>/<file>:<line>"
    ids = [f"docs/docs.jsonl:{i + 1}" for i in range(len(SPECIAL_DOCS))]
    expected = {"train": [], "val": []}
    for doc_id, text in zip(ids, SPECIAL_DOCS):
        expected["val" if hash_fraction(0, doc_id) < 0.4 else "train"].append(text)
    assert expected["train"] and expected["val"]
    for split in ("train", "val"):
        records = shard_records(manifest, out, split, "docs")
        assert len(records) == len(expected[split])
        for record, text in zip(records, expected[split]):
            assert record[-1] == eos and eos not in record[:-1]
            assert sp.decode(record[:-1].tolist()) == text
    groups = [s for s in manifest["splits"]["train"]["shards"] if s["source"] == "docs"]
    assert len(groups) > 1  # the round-robin over several shards was exercised
    empty = [r for r in shard_records(manifest, out, "train", "docs") + shard_records(manifest, out, "val", "docs") if len(r) == 1]
    assert [r.tolist() for r in empty] == [[eos]]  # the empty document: a record holding only EOS
    encode = manifest["stages"][-1]
    assert encode["stage"] == "encode" and encode["counters"]["empty_documents"] == 1
    assert not any(k.startswith("repaired:") for k in encode["counters"])
    assert all(c["mismatched"] == 0 for c in manifest["encode"]["roundtrip_check"].values())
    assert manifest["sources"][1]["unk_tokens"] == 0


def test_manifest_fields_counts_and_hashes(tmp_path):
    cfg = make_cfg(tmp_path, overrides=["tokenizer.add_bos=true", "tokenizer.user_defined_symbols=[<|tool|>]"])
    m = prepare(cfg, log=quiet)
    out = cfg.output
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    assert sp.encode_as_pieces("a <|tool|>\n2024") == ["a", "▁", "<|tool|>", "\n", "2", "0", "2", "4"]  # digits split
    assert sorted(os.listdir(out)) == ["manifest.json", "removed.jsonl.gz", "report.md", "shards", "tokenizer.log", "tokenizer.model"]
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert on_disk == json.loads(json.dumps(m)) and format.read_manifest(out)["format_version"] == format.FORMAT_VERSION
    assert m["dtype"] == "uint16"
    tok = m["tokenizer"]
    assert tok == {"path": "tokenizer.model", "sha256": hashlib.sha256(open(os.path.join(out, "tokenizer.model"), "rb").read()).hexdigest(),
                   "vocab_size": 1000, "model_type": "bpe", "bos_id": 2, "eos_id": 3, "pad_id": 0, "unk_id": 1, "add_bos": True}
    dtype = np.dtype("<u2")
    listed = set()
    for split in ("train", "val"):
        spec = m["splits"][split]
        names = [s["path"] for s in spec["shards"]]
        assert names == [format.shard_name(split, i, len(names)) for i in range(len(names))]
        for s in spec["shards"]:
            path = os.path.join(out, s["path"])
            listed.add(s["path"])
            assert s["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
            assert s["bytes"] == os.path.getsize(path)
            records = read_shard(path, dtype)
            assert s["records"] == len(records) and s["tokens"] == sum(map(len, records))
            assert all(r[0] == 2 and r[-1] == 3 for r in records)  # [BOS] + text + EOS
        assert spec["documents"] == sum(s["records"] for s in spec["shards"])
        assert spec["tokens"] == sum(s["tokens"] for s in spec["shards"])
    assert listed == {f"shards/{n}" for n in os.listdir(os.path.join(out, "shards"))}
    sources = {s["name"]: s for s in m["sources"]}
    assert sources["docs"]["documents"] == len(SPECIAL_DOCS) and sources["docs"]["weight"] == 1.0 and sources["docs"]["type"] == "jsonl"
    assert sources["docs"]["bytes"] == sum(len(t.encode()) for t in SPECIAL_DOCS)
    assert sum(s["tokens"] for s in m["sources"]) == m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
    for name, s in sources.items():
        assert m["compression"]["per_source"][name] == round(s["bytes"] / (s["tokens"] - 2 * s["documents"]), 4)
    assert [st["stage"] for st in m["stages"]] == ["read", "split", "encode"]  # no document stages configured
    read = m["stages"][0]["counters"]
    assert (read["documents:docs"], read["bytes:docs"]) == (len(SPECIAL_DOCS), sources["docs"]["bytes"])
    assert all(st["documents_in"] == st["documents_out"] == m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
               for st in m["stages"])
    training = m["tokenizer_training"]
    assert training["sentences_sampled"] == training["trainer_log"]["sentences_loaded"]
    assert m["config"] == cfg.to_dict()


def test_byte_identical_across_runs_and_worker_counts(tmp_path):
    a = prepare(make_cfg(tmp_path, "a"), log=quiet)
    b = prepare(make_cfg(tmp_path, "b", overrides=["workers=2"]), log=quiet)
    assert a["tokenizer"]["sha256"] == b["tokenizer"]["sha256"]
    assert a["splits"] == b["splits"]  # includes every shard's sha256
    c = prepare(make_cfg(tmp_path, "c", overrides=["seed=1"]), log=quiet)
    for seed, m in ((0, a), (1, c)):  # the seed moves documents between splits, as the hash says
        val = sum(hash_fraction(seed, f"docs/docs.jsonl:{i + 1}") < 0.4 for i in range(len(SPECIAL_DOCS)))
        assert m["sources"][1]["splits"]["val"]["documents"] == val
    assert a["sources"][1]["splits"]["val"]["documents"] != c["sources"][1]["splits"]["val"]["documents"]


def test_long_lines_are_cut_for_the_trainer_not_dropped(tmp_path):
    long_line = "é" * 10_000 + " end"  # 20,004 bytes: SentencePiece would skip it whole
    cfg = make_cfg(tmp_path, texts=[long_line] * 3 + ["short line"] * 5,
                   overrides=["sources.prose.weight=1", "split.val_fraction=0"], tokenizer={"vocab_size": 1000, "max_sentence_length": 4192})
    t = prepare(cfg, log=quiet)["tokenizer_training"]
    assert t["lines_cut_to_fit"] == 3
    assert t["characters_sampled"] == t["characters_total"] == t["trainer_log"]["characters_counted"]
    assert t["trainer_log"]["sentences_skipped_too_long"] == 0
    assert t["sentences_sampled"] == t["trainer_log"]["sentences_loaded"] == t["sentences_total"]
    # sampling: the trainer sees a subset, and the manifest says how much
    cfg = make_cfg(tmp_path, "sampled", overrides=["tokenizer.input_sentence_size=2000"])
    t = prepare(cfg, log=quiet)["tokenizer_training"]
    assert t["sentences_sampled"] == 2000 == t["trainer_log"]["sentences_loaded"] < t["sentences_total"]
    assert t["characters_sampled"] == t["trainer_log"]["characters_counted"] < t["characters_total"]
    assert t["fraction_seen"] == t["characters_sampled"] / t["characters_total"]


def test_existing_tokenizer_is_installed_and_reused(tmp_path):
    first = prepare(make_cfg(tmp_path, "first"), log=quiet)
    model = os.path.join(tmp_path, "first", "tokenizer.model")
    cfg = make_cfg(tmp_path, "second", overrides=[f"tokenizer.path={model}", "tokenizer.vocab_size=50"])
    second = prepare(cfg, log=quiet)
    assert second["tokenizer"]["sha256"] == first["tokenizer"]["sha256"]
    assert second["tokenizer_training"] == {"existing_model": model}
    assert second["splits"] == first["splits"]
    (tmp_path / "bad.model").write_bytes(b"junk")
    with pytest.raises(DataPrepError, match="is not a SentencePiece model"):
        prepare(make_cfg(tmp_path, "third", overrides=[f"tokenizer.path={tmp_path / 'bad.model'}"]), log=quiet)


def test_position_split_cuts_each_document(tmp_path):
    (tmp_path / "book.txt").write_text("abcdefghij" * 10)
    cfg = config_from_dict({"output": str(tmp_path / "out"), "workers": 1,
                            "sources": [{"name": "book", "type": "txt", "paths": [str(tmp_path / "book.txt")],
                                         "split": {"by": "position", "val_fraction": 0.25}}],
                            "tokenizer": {"model_type": "char", "vocab_size": None, "byte_fallback": False}})
    m = prepare(cfg, log=quiet)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "out" / "tokenizer.model"))
    train, val = (shard_records(m, cfg.output, s, "book") for s in ("train", "val"))
    assert [sp.decode(r[:-1].tolist()) for r in train + val] == ["abcdefghij" * 7 + "abcde", "fghij" + "abcdefghij" * 2]
    assert m["tokenizer"]["vocab_size"] == 10 + 1 + 4  # a..j, '\n' (always a piece), pad/unk/bos/eos


def test_reruns_failures_and_empty_sources(tmp_path):
    cfg = make_cfg(tmp_path)
    first = prepare(cfg, log=quiet)
    mtime = os.path.getmtime(os.path.join(cfg.output, "manifest.json"))
    messages = []
    assert prepare(cfg, log=messages.append) == first and "up to date" in messages[0]
    assert os.path.getmtime(os.path.join(cfg.output, "manifest.json")) == mtime
    with pytest.raises(DataPrepError, match="already holds a dataset prepared with another config; pass --overwrite"):
        prepare(make_cfg(tmp_path, overrides=["seed=5"]), log=quiet)
    # a failed run leaves no manifest (the folder is unfinished); only the stage work it may resume
    (tmp_path / "junk.jsonl").write_text("{broken\n")
    bad = make_cfg(tmp_path, overrides=[f"sources.docs.paths=[{tmp_path / 'junk.jsonl'}]"])
    with pytest.raises(SourceError, match="source 'docs' produced no documents .*read:malformed_json: skipped 1 \\(e.g. docs/junk.jsonl:1\\)"):
        prepare(bad, overwrite=True, log=quiet)
    assert sorted(os.listdir(cfg.output)) == [".work", "shards"] and os.listdir(os.path.join(cfg.output, "shards")) == []
    assert os.listdir(os.path.join(cfg.output, ".work")) == ["stages"]
    # how the work is run does not change the bytes, so it is no other dataset
    assert prepare(make_cfg(tmp_path, overrides=["workers=2", "tasks=3"]), overwrite=True, log=quiet)["splits"] == first["splits"]
    assert prepare(make_cfg(tmp_path, overrides=["workers=1", "executor.kind=local"]), log=messages.append)["splits"] == first["splits"]
    assert "up to date" in messages[-1] and not os.path.exists(os.path.join(cfg.output, ".work"))


def test_cli_success_and_tokenizer_errors(tmp_path, capsys):
    write_jsonl(tmp_path / "docs.jsonl", SPECIAL_DOCS)
    config = tmp_path / "c.yaml"
    config.write_text(f"output: {tmp_path / 'cli'}\nworkers: 1\nsources:\n  - {{name: docs, type: jsonl, paths: [{tmp_path / 'docs.jsonl'}]}}\n"
                      "split: {val_fraction: 0.4}\ntokenizer: {vocab_size: 1000}\n")
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "docs" in out and "train: " in out and f"wrote {tmp_path / 'cli'}" in out
    assert main(["--config", str(config), "tokenizer.vocab_size=100000", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("data_prep: error: SentencePiece could not train the tokenizer") and "at most tokenizer.vocab_size=" in err
    assert main(["--config", str(config), "tokenizer.vocab_size=300", "--overwrite"]) == 2
    assert "raise tokenizer.vocab_size above that" in capsys.readouterr().err
