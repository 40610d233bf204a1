"""Opening a prepared dataset: manifest checks, shard checks, and random access to its documents.

`open_dataset` checks everything that is cheap to check before training starts (manifest fields,
shard files present, sizes and record counts as the manifest says; sha256 only with
`verify=True`, since hashing large shards at every start is slow). `DocumentSource` then reads one
split as a random-access sequence of token arrays; a read that fails mid-stream raises
DataFormatError naming the shard file and record.

Imports numpy, grain, array_record and the path layer only (no JAX), so Grain worker processes start quickly.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import os
from typing import Any

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader
from grain.sources import ArrayRecordDataSource

from jaxlm.data import format as fmt
from jaxlm.data.format import DataFormatError
from jaxlm.data.remote import local_dataset

_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    path: str  # absolute
    records: int
    tokens: int
    bytes: int | None
    sha256: str | None


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    documents: int
    tokens: int
    shards: tuple[ShardInfo, ...]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the reader needs from a prepared dataset's manifest, already checked."""

    path: str
    dtype: np.dtype
    vocab_size: int
    tokenizer_sha256: str
    tokenizer_path: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    splits: dict[str, SplitInfo]
    manifest: dict[str, Any]
    record_kind: str = "tokens"  # "tokens_mask": documents are format.MASKED_TOKEN arrays (token, loss mask)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise DataFormatError(
                f"dataset {self.path!r} has no {name!r} split (it has {sorted(self.splits)}); "
                f"re-run data_prep for it with a {name} split."
            )
        return self.splits[name]


def open_dataset(path: str, expected_vocab_size: int | None = None, *, verify: bool = False) -> DatasetInfo:
    """Reads and checks a data_prep output folder; raises DataFormatError saying what to do.

    expected_vocab_size: the model's vocabulary size; every token id must fit, so the
      tokenizer's vocab_size must be <= it (a model may pad its vocabulary up).
    verify: also compare every shard's sha256 with the manifest (reads every byte).
    A dataset on Cloud Storage (gs://...) is read through its local copy (jaxlm/data/remote.py).
    """
    path = os.path.abspath(local_dataset(path))
    manifest = fmt.read_manifest(path)
    where = os.path.join(path, fmt.MANIFEST)
    dtype = _DTYPES.get(manifest["dtype"])
    if dtype is None:
        raise DataFormatError(f"{where}: dtype {manifest['dtype']!r} is not one of {sorted(_DTYPES)}; re-run data_prep.")
    tok = manifest["tokenizer"]
    for key in ("vocab_size", "sha256"):
        if key not in tok:
            raise DataFormatError(f"{where}: tokenizer has no {key!r} field; re-run data_prep for this folder.")
    vocab_size = int(tok["vocab_size"])
    if fmt.token_dtype(vocab_size).itemsize > dtype.itemsize:
        raise DataFormatError(f"{where}: dtype {manifest['dtype']} cannot hold a vocabulary of {vocab_size}; re-run data_prep.")
    if expected_vocab_size is not None and vocab_size > expected_vocab_size:
        raise DataFormatError(
            f"dataset {path!r} was tokenized with a vocabulary of {vocab_size} ids but the model has "
            f"vocab_size={expected_vocab_size}; set model.vocab_size >= {vocab_size} or prepare the "
            "data with the model's tokenizer."
        )
    splits = {name: _check_split(path, name, spec, verify) for name, spec in manifest["splits"].items()}
    return DatasetInfo(
        path=path,
        dtype=dtype,
        vocab_size=vocab_size,
        tokenizer_sha256=str(tok["sha256"]),
        tokenizer_path=fmt.inside(path, tok.get("path", fmt.TOKENIZER), "the tokenizer"),
        bos_id=tok.get("bos_id"),
        eos_id=tok.get("eos_id"),
        pad_id=tok.get("pad_id"),
        splits=splits,
        manifest=manifest,
        record_kind=fmt.record_kind(manifest),
    )


def _check_split(root: str, name: str, spec: dict[str, Any], verify: bool) -> SplitInfo:
    redo = f"re-run `python -m data_prep --config <its config> output={root}`"
    try:
        shards = tuple(
            ShardInfo(
                path=fmt.inside(root, s["path"], f"a {name} shard"),
                records=int(s["records"]),
                tokens=int(s.get("tokens", 0)),
                bytes=None if s.get("bytes") is None else int(s["bytes"]),
                sha256=s.get("sha256"),
            )
            for s in spec["shards"]
        )
        documents, tokens = int(spec["documents"]), int(spec.get("tokens", 0))
    except DataFormatError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(f"{root}/{fmt.MANIFEST}: split {name!r} is malformed ({e!r}); {redo}.") from e
    for shard in shards:
        if not os.path.isfile(shard.path):
            raise DataFormatError(f"shard {shard.path} listed in the manifest is missing; {redo}.")
        size = os.path.getsize(shard.path)
        if shard.bytes is not None and size != shard.bytes:
            raise DataFormatError(
                f"shard {shard.path} has {size} bytes, the manifest says {shard.bytes}: it is truncated or "
                f"was replaced; {redo}."
            )
        if verify and shard.sha256 and sha256_file(shard.path) != shard.sha256:
            raise DataFormatError(f"shard {shard.path} does not match its sha256 in the manifest: it is corrupt; {redo}.")
        records = _count_records(shard.path)
        if records != shard.records:
            raise DataFormatError(
                f"shard {shard.path} holds {records} records, the manifest says {shard.records}: it is "
                f"truncated or corrupt; {redo}."
            )
    if sum(s.records for s in shards) != documents:
        raise DataFormatError(
            f"{root}/{fmt.MANIFEST}: split {name!r} says {documents} documents but its shards hold "
            f"{sum(s.records for s in shards)}; {redo}."
        )
    return SplitInfo(documents=documents, tokens=tokens, shards=shards)


def _count_records(path: str) -> int:
    try:
        reader = ArrayRecordReader(path)
        try:
            return reader.num_records()
        finally:
            reader.close()
    except Exception as e:  # array_record raises plain RuntimeError/ValueError with Riegeli text
        raise DataFormatError(
            f"shard {path} cannot be opened as ArrayRecord ({str(e) or type(e).__name__}): it is truncated or "
            "corrupt; re-run data_prep for this dataset."
        ) from e


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DocumentSource:
    """Random access to one split's documents as token arrays (MASKED_TOKEN arrays for a
    "tokens_mask" dataset), in shard order.

    A Grain data source (len + getitem, picklable for worker processes). Errors name the shard.
    """

    def __init__(self, info: DatasetInfo, split: str):
        shards = info.split(split).shards
        self._paths = [s.path for s in shards]
        self._ends = np.cumsum([s.records for s in shards]).tolist()  # record index where each shard ends
        self._dtype, self._kind = info.dtype, info.record_kind
        # "path[start:end]" tells ArrayRecordDataSource the counts, which open_dataset already checked,
        # so it opens no file here; readers open lazily in whichever process reads.
        nonempty = [f"{s.path}[0:{s.records}]" for s in shards if s.records]
        self._records = ArrayRecordDataSource(nonempty) if nonempty else []

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> np.ndarray:
        try:
            record = self._records[index]
        except Exception as e:  # the reader raises RuntimeError("Corrupted Riegeli/records file ...")
            raise self._error(index, f"cannot be read ({e})") from e
        try:
            return fmt.decode_record(record, self._dtype, self._kind)
        except ValueError as e:
            raise self._error(index, str(e)) from None

    def _error(self, index: int, what: str) -> DataFormatError:
        shard = bisect.bisect_right(self._ends, index)
        first = self._ends[shard - 1] if shard else 0
        return DataFormatError(
            f"shard {self._paths[shard]} record {index - first} {what}: the file is corrupt; re-run "
            "data_prep for this dataset (or restore the shard from a copy)."
        )

    def __repr__(self) -> str:  # Grain uses repr in pipeline summaries; keep it short
        return f"DocumentSource({len(self._paths)} shards, {len(self)} documents)"
