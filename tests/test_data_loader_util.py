"""Test helper (no tests here): writes small prepared datasets exactly as `jaxlm.data.format` specifies.

The real writer is `python -m data_prep`; the loader tests build their own tiny datasets so they
do not depend on it, with token arrays they choose.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from jaxlm.data import format as fmt

TOKENIZER_SHA = hashlib.sha256(b"test tokenizer").hexdigest()


def write_dataset(root, splits: dict, *, vocab_size: int = 1000, shards: int = 2, tokenizer_sha: str = TOKENIZER_SHA) -> str:
    """splits: {"train": [token arrays], "val": [...]}; each split's documents in order over `shards` files.

    Documents that are `fmt.MASKED_TOKEN` arrays make a "tokens_mask" dataset (instruction records)."""
    root = str(root)
    masked = any(getattr(d, "dtype", None) == fmt.MASKED_TOKEN for docs in splits.values() for d in docs)
    os.makedirs(os.path.join(root, fmt.SHARD_DIR), exist_ok=True)
    dtype = fmt.token_dtype(vocab_size)
    manifest_splits = {}
    for split, docs in splits.items():
        bounds = np.linspace(0, len(docs), shards + 1).astype(int)
        entries = []
        for i in range(shards):
            rel = fmt.shard_name(split, i, shards)
            path = os.path.join(root, rel)
            writer = ArrayRecordWriter(path, "group_size:1")
            part = docs[bounds[i] : bounds[i + 1]]
            for doc in part:
                writer.write(fmt.encode_masked_record(doc["token"], doc["mask"], dtype) if masked
                             else fmt.encode_record(doc, dtype))
            writer.close()
            with open(path, "rb") as f:
                data = f.read()
            entries.append({
                "path": rel,
                "sha256": hashlib.sha256(data).hexdigest(),
                "records": len(part),
                "tokens": int(sum(len(d) for d in part)),
                "bytes": len(data),
            })
        manifest_splits[split] = {
            "documents": len(docs),
            "tokens": int(sum(len(d) for d in docs)),
            "shards": entries,
        }
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "record_kind": "tokens_mask" if masked else "tokens",
        "dtype": dtype.name,
        "tokenizer": {
            "path": fmt.TOKENIZER, "sha256": tokenizer_sha, "vocab_size": vocab_size,
            "model_type": "bpe", "bos_id": -1, "eos_id": 2, "pad_id": 0, "unk_id": 1,
        },
        "sources": [{"name": "test", "weight": 1.0}],
        "splits": manifest_splits,
        "stages": [],
        "compression": {},
    }
    with open(os.path.join(root, fmt.MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return root


def random_docs(n: int, *, seed: int, low: int = 3, high: int = 1000, min_len: int = 1, max_len: int = 300, eos: int = 2) -> list:
    """n documents of min_len..max_len tokens, each ending in EOS; ids in [low, high) otherwise."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        doc = rng.integers(low, high, size=length)
        doc[-1] = eos
        docs.append(doc)
    return docs


def learnable_docs(n, vocab, seed):
    """Documents a tiny model learns in a few steps: each an arithmetic progression mod vocab
    (ids from 3), ending in EOS (2)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length = int(rng.integers(5, 60))
        start, stride = int(rng.integers(3, vocab)), int(rng.integers(1, 4))
        docs.append(np.append((start + stride * np.arange(length)) % (vocab - 3) + 3, 2))
    return docs


def markov_docs(n, seed, vocab):
    """Each token has 4 equally likely successors: learnable, with the loss levelling off near
    log 4 rather than at 0 (what loss-spike tests need)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        x = [int(rng.integers(3, vocab))]
        for e in rng.integers(0, 4, int(rng.integers(100, 400))):
            x.append((5 * x[-1] + 1 + int(e)) % (vocab - 3) + 3)
        docs.append(np.array(x + [2]))
    return docs
