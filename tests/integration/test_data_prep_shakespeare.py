"""The classic char-level Tiny Shakespeare split (nanoGPT's shakespeare_char) from the shipped config."""

import os

import numpy as np
import sentencepiece as spm
from array_record.python.array_record_module import ArrayRecordReader

from data_prep import load_config, prepare
from tests.helpers import REPO



def test_char_split_matches_nanogpt(shared_data, tmp_path):
    path = shared_data / "text" / "tinyshakespeare" / "input.txt"
    text = path.read_text(encoding="utf-8")
    assert len(text) == 1_115_394
    cfg = load_config(os.path.join(REPO, "data_prep", "configs", "shakespeare_char.yaml"),
                      [f"output={tmp_path / 'sc'}", f"sources.shakespeare.paths=[{path}]"])
    m = prepare(cfg, log=lambda _: None)
    out = tmp_path / "sc"
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    # 65 characters ('\n' and ' ' among them) plus pad, unk, bos, eos
    assert m["tokenizer"]["vocab_size"] == sp.vocab_size() == 65 + 4
    pieces = {sp.id_to_piece(i) for i in range(sp.vocab_size())}
    assert {c if c != " " else "▁" for c in set(text)} <= pieces
    records = {}
    for split, chars in (("train", 1_003_854), ("val", 111_540)):
        (shard,) = m["splits"][split]["shards"]
        reader = ArrayRecordReader(str(out / shard["path"]))
        (record,) = reader.read_all()  # one document: the train (or val) text as one stream
        reader.close()
        tokens = np.frombuffer(record, dtype="<u2")
        assert len(tokens) == chars + 1 and tokens[-1] == sp.eos_id()  # one token per character, then EOS
        assert m["splits"][split]["tokens"] == chars + 1
        assert not np.any(tokens == sp.unk_id())
        records[split] = sp.decode(tokens[:-1].tolist())
    assert records["train"] == text[:1_003_854] and records["val"] == text[1_003_854:]
    assert m["sources"][0]["unk_tokens"] == 0
