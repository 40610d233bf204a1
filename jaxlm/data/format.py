"""The on-disk contract between `data_prep` (writer) and `jaxlm.data` (reader).

A prepared dataset is a folder:

    tokenizer.model                      SentencePiece model the tokens came from
    shards/train-00000-of-00008.array_record
    shards/val-00000-of-00001.array_record
    manifest.json                        see `read_manifest`

Record format: one ArrayRecord record per document. A record is the document's token ids as a
little-endian integer array with no header; the element type is the manifest's `dtype`
("uint16" when the vocabulary has at most 65,536 entries, else "uint32"). BOS (when configured)
and EOS are already part of the record, so the reader never needs the tokenizer.

This module imports numpy only, so that the offline pipeline can use it without JAX.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
SHARD_DIR = "shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


class DataFormatError(ValueError):
    """A prepared dataset is missing, corrupt or does not fit the model; the message says what to do."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id of a vocabulary."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def encode_record(tokens, dtype: np.dtype) -> bytes:
    return np.asarray(tokens, dtype=dtype).tobytes()


def decode_record(record: bytes, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(record, dtype=dtype)


def shard_name(split: str, index: int, count: int) -> str:
    return f"{SHARD_DIR}/{split}-{index:05d}-of-{count:05d}.array_record"


def read_manifest(dataset_dir: str) -> dict[str, Any]:
    """Reads and checks `manifest.json`; raises DataFormatError with the fix when it is unusable.

    The fields the reader relies on:
      format_version, dtype, tokenizer{sha256, vocab_size, bos_id, eos_id, pad_id},
      splits{train|val: {documents, tokens, shards: [{path, sha256, records, tokens, bytes}]}}
    """
    path = os.path.join(dataset_dir, MANIFEST)
    if not os.path.isdir(dataset_dir):
        raise DataFormatError(
            f"dataset folder {dataset_dir!r} does not exist. Prepare it with "
            f"`python -m data_prep --config data_prep/configs/<recipe>.yaml output={dataset_dir}`."
        )
    if not os.path.isfile(path):
        raise DataFormatError(
            f"{path} is missing: {dataset_dir!r} is not a finished data_prep output. Re-run "
            f"`python -m data_prep --config <its config> output={dataset_dir}`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path} is not valid JSON ({e}); re-run data_prep for this folder.") from e
    for key in ("format_version", "dtype", "tokenizer", "splits"):
        if key not in manifest:
            raise DataFormatError(f"{path} has no {key!r} field; it was not written by this data_prep. Re-run it.")
    if manifest["format_version"] != FORMAT_VERSION:
        raise DataFormatError(
            f"{path} has format_version {manifest['format_version']}, this jaxlm reads {FORMAT_VERSION}; "
            "re-run data_prep with this version."
        )
    return manifest
