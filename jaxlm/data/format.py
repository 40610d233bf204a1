"""The on-disk contract between `data_prep` (writer) and `jaxlm.data` (reader).

A prepared dataset is a folder:

    tokenizer.model                      SentencePiece model the tokens came from
    shards/train-00000-of-00008.array_record
    shards/val-00000-of-00001.array_record
    manifest.json                        see `read_manifest`

Record format: one ArrayRecord record per document (or example). The manifest's `record_kind` says
which of two layouts every record of the dataset has:

  "tokens"       (pre-training) the document's token ids as a little-endian integer array with no
                 header; the element type is the manifest's `dtype` ("uint16" when the vocabulary
                 has at most 65,536 entries, else "uint32"). BOS (when configured) and EOS are
                 already part of the record, so the reader never needs the tokenizer.
  "tokens_mask"  (instruction tuning) the n token ids as above, then n loss-mask bytes (uint8,
                 1 = the token is trained: a response token, see `jaxlm.data.chat`). Decoded as one
                 structured array with fields "token" and "mask".
  "pair"         (preference tuning) a prompt with a chosen and a rejected response, each rendered
                 whole by the chat template: two little-endian uint32 lengths (chosen c, rejected r),
                 the c + r token ids, then c + r mask bytes (1 = a token of the final response, the
                 part the two sequences differ in), optionally followed by two float32: a reference
                 model's log-probability of each response (the manifest's `reference` block names the
                 model). Decoded as `Pair`.

Versions: format_version 1 (no `record_kind`; always "tokens") is read exactly as before;
format_version 2 adds `record_kind` (absent = "tokens") and, for "tokens_mask", the manifest's
`chat` block (template file, special tokens, truncation counts).

This module imports numpy only, so that the offline pipeline can use it without JAX.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Optional

import numpy as np

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
SHARD_DIR = "shards"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SPLITS = ("train", "val")
RECORD_KINDS = ("tokens", "tokens_mask", "pair")
MASKED_TOKEN = np.dtype([("token", "<u4"), ("mask", "u1")])  # a decoded "tokens_mask" record


class DataFormatError(ValueError):
    """A prepared dataset is missing, corrupt or does not fit the model; the message says what to do."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id of a vocabulary."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def encode_record(tokens, dtype: np.dtype) -> bytes:
    return np.asarray(tokens, dtype=dtype).tobytes()


def encode_masked_record(tokens, mask, dtype: np.dtype) -> bytes:
    tokens, mask = np.asarray(tokens, dtype=dtype), np.asarray(mask, dtype=np.uint8)
    if tokens.shape != mask.shape or tokens.ndim != 1:
        raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must be 1-D and of one length")
    return tokens.tobytes() + mask.tobytes()


class Pair(NamedTuple):
    """A decoded "pair" record: MASKED_TOKEN arrays of both sequences and, when stored, the
    reference model's log-probabilities (float32 (2,): chosen, rejected), else None."""
    chosen: np.ndarray
    rejected: np.ndarray
    reference: Optional[np.ndarray] = None


_PAIR_HEADER = np.dtype("<u4")
_REFERENCE = np.dtype("<f4")


def encode_pair_record(chosen, chosen_mask, rejected, rejected_mask, dtype: np.dtype, reference=None) -> bytes:
    """A "pair" record; `reference`: (log p_ref(chosen), log p_ref(rejected)) or None."""
    parts = []
    for tokens, mask in ((chosen, chosen_mask), (rejected, rejected_mask)):
        tokens, mask = np.asarray(tokens, dtype=dtype), np.asarray(mask, dtype=np.uint8)
        if tokens.shape != mask.shape or tokens.ndim != 1:
            raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must be 1-D and of one length")
        parts.append((tokens, mask))
    (c, cm), (r, rm) = parts
    out = np.array([len(c), len(r)], _PAIR_HEADER).tobytes() + c.tobytes() + r.tobytes() + cm.tobytes() + rm.tobytes()
    if reference is not None:
        out += np.asarray(reference, _REFERENCE).reshape(2).tobytes()
    return out


def decode_pair_record(record: bytes, dtype: np.dtype) -> Pair:
    head = 2 * _PAIR_HEADER.itemsize
    if len(record) < head:
        raise ValueError(f"has {len(record)} bytes, fewer than a pair record's header")
    c, r = (int(n) for n in np.frombuffer(record, _PAIR_HEADER, count=2))
    body = head + (c + r) * (dtype.itemsize + 1)
    extra = len(record) - body
    if extra not in (0, 2 * _REFERENCE.itemsize):
        raise ValueError(f"has {len(record)} bytes, not a pair record of {c} + {r} tokens")
    tokens = np.frombuffer(record, dtype=dtype, count=c + r, offset=head)
    mask = np.frombuffer(record, dtype=np.uint8, count=c + r, offset=head + (c + r) * dtype.itemsize)
    seqs = []
    for lo, hi in ((0, c), (c, c + r)):
        seq = np.empty(hi - lo, MASKED_TOKEN)
        seq["token"], seq["mask"] = tokens[lo:hi], mask[lo:hi]
        seqs.append(seq)
    reference = np.frombuffer(record, _REFERENCE, count=2, offset=body).copy() if extra else None
    return Pair(seqs[0], seqs[1], reference)


def decode_record(record: bytes, dtype: np.dtype, kind: str = "tokens"):
    """A record's tokens (kind "tokens"), a MASKED_TOKEN array (kind "tokens_mask"), or a Pair.

    Raises ValueError when the length does not fit the layout."""
    if kind == "pair":
        return decode_pair_record(record, dtype)
    if kind == "tokens":
        if len(record) % dtype.itemsize:
            raise ValueError(f"has {len(record)} bytes, not a whole number of {dtype} tokens")
        return np.frombuffer(record, dtype=dtype)
    n, rest = divmod(len(record), dtype.itemsize + 1)
    if rest:
        raise ValueError(f"has {len(record)} bytes, not n {dtype} tokens and n mask bytes")
    out = np.empty(n, MASKED_TOKEN)
    out["token"] = np.frombuffer(record, dtype=dtype, count=n)
    out["mask"] = np.frombuffer(record, dtype=np.uint8, offset=n * dtype.itemsize)
    return out


def record_tokens(doc: np.ndarray) -> np.ndarray:
    """A decoded record's token ids, whatever its kind (the mask of a "tokens_mask" record left out)."""
    return doc["token"] if doc.dtype.names else doc


def record_kind(manifest: dict[str, Any]) -> str:
    return manifest.get("record_kind", "tokens") if manifest.get("format_version", 1) >= 2 else "tokens"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{SHARD_DIR}/{split}-{index:05d}-of-{count:05d}.array_record"


def inside(root: str, rel: Any, what: str) -> str:
    """`rel` joined to the dataset folder `root`. A manifest names files inside its own folder only:
    an absolute path or a `..` would let a copied or hand-edited manifest read files from anywhere."""
    parts = str(rel).replace("\\", "/").split("/")
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in parts:
        raise DataFormatError(
            f"{os.path.join(root, MANIFEST)}: {what}'s path {rel!r} is not a relative path inside the "
            "dataset folder (absolute paths and '..' are refused); re-run data_prep for this folder.")
    return os.path.join(root, rel)


def read_manifest(dataset_dir: str) -> dict[str, Any]:
    """Reads and checks `manifest.json`; raises DataFormatError with the fix when it is unusable.

    The fields the reader relies on:
      format_version, record_kind (version 2), dtype, tokenizer{sha256, vocab_size, bos_id, eos_id, pad_id},
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
    if manifest["format_version"] not in READABLE_VERSIONS:
        raise DataFormatError(
            f"{path} has format_version {manifest['format_version']}, this jaxlm reads {list(READABLE_VERSIONS)}; "
            "re-run data_prep with this version."
        )
    if record_kind(manifest) not in RECORD_KINDS:
        raise DataFormatError(f"{path} has record_kind {manifest['record_kind']!r}, this jaxlm reads {list(RECORD_KINDS)}; "
                              "re-run data_prep with this version.")
    return manifest
