"""The training/eval data loader: prepared datasets -> packed, host-local numpy batches.

Pipeline (Grain), per source dataset:
    ArrayRecord shards -> documents (token arrays) -> global shuffle, reshuffled every epoch
    -> repeat num_epochs -> this process's part (i::process_count of the shuffled order)
then the sources are interleaved by weight (`mixing.MixedDocuments`; weights = document shares),
packed into rows (`packing`), and batches are prefetched in a background thread.

Instruction data (datasets whose records carry a loss mask, record_kind "tokens_mask") is packed
as whole examples (`packing`: never split across rows, truncated to seq_len), and `loss_mask`
is 1 only on response tokens. Pre-training sources mixed in are trained on every token.

Reading (ArrayRecord lookups and decoding) runs in `worker_count` Grain worker processes, or in
threads when it is 0. The workers only read documents in order; packing happens after them, so
the batches and the state do not depend on worker_count or prefetch: a run may resume with other
reader settings and still see exactly the same batches.

State: {"position", "offset"} into this process's document sequence plus a fingerprint of
everything that defines that sequence; `set_state` refuses a state from a different setup.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from absl import flags

from jaxlm.data import format as fmt
from jaxlm.data.format import DataFormatError
from jaxlm.data.mixing import MixedDocuments
from jaxlm.data.packing import PackedBatchDataset
from jaxlm.data.shards import DatasetInfo, DocumentSource, open_dataset

__all__ = ["DataFormatError", "DatasetInfo", "Loader", "LoaderStateError", "build_loader", "open_dataset"]

_STATE_VERSION = 1


class LoaderStateError(ValueError):
    """A saved loader state does not belong to this loader's data setup."""


class Loader:
    """Iterator of batches {inputs, targets, segment_ids, positions, loss_mask}, each int32 (rows, seq_len).

    Finite (num_epochs set) loaders raise StopIteration at the end; the last batch is padded.
    Call `close()` (or use `with`) to stop worker processes early.
    """

    def __init__(self, batches: grain.IterDataset, fingerprint: dict[str, Any]):
        self._fingerprint = fingerprint
        self._iterator = iter(batches)

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position after the last batch returned (a few integers)."""
        return {"version": _STATE_VERSION, "stream": dict(self._iterator.get_state()), "setup": self._fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues exactly where the loader that produced `state` was."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION or "stream" not in state:
            raise LoaderStateError(f"not a jaxlm loader state (version {_STATE_VERSION}): {str(state)[:200]}")
        saved = state.get("setup", {})
        diff = sorted(k for k in set(saved) | set(self._fingerprint) if saved.get(k) != self._fingerprint.get(k))
        if diff:
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {self._fingerprint.get(k)!r}" for k in diff)
            raise LoaderStateError(
                f"the saved data state belongs to a different data setup ({detail}). Resume with the "
                "same data settings, or start the data stream afresh without restoring its state."
            )
        self._iterator.set_state(state["stream"])

    def close(self) -> None:
        self._iterator.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_loader(
    sources: Sequence[tuple[str, float]],
    split: str = "train",
    *,
    seq_len: int,
    batch_rows: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    shuffle: bool = True,
    worker_count: int = 0,
    prefetch: int = 2,
    model_vocab_size: int | None = None,
    verify: bool = False,
    shuffle_rows: int = 0,
) -> Loader:
    """Batches of `batch_rows` packed rows of `seq_len` tokens for this process.

    sources: (dataset folder, weight) pairs; weights are shares of documents (see `mixing`).
    num_epochs: passes over each source; None repeats forever (training). Eval uses 1 with
      shuffle=False, giving the same finite stream every time it is built.
    worker_count: Grain worker processes reading documents (0 = reader threads in this process).
    prefetch: batches prepared ahead in a background thread (0 = none).
    model_vocab_size: if set, every dataset's vocabulary must fit in it, else DataFormatError naming
      the dataset. Mixed datasets must always share one tokenizer (same sha256).
    verify: check every shard's sha256 before starting (slow for large datasets).
    shuffle_rows: if > 0, packed rows are shuffled within windows of this many rows before batching,
      so a batch does not hold consecutive pieces of one long document (a single-file corpus
      such as Tiny Shakespeare is one document). Restoring re-reads the current window only.
    """
    _check_args(sources, split, seq_len, batch_rows, seed, process_index, process_count, num_epochs, worker_count, prefetch)
    infos = [open_dataset(path, model_vocab_size, verify=verify) for path, _ in sources]
    for info in infos[1:]:
        if info.tokenizer_sha256 != infos[0].tokenizer_sha256:
            raise DataFormatError(
                f"dataset {info.path!r} was tokenized with a different tokenizer (sha256 "
                f"{info.tokenizer_sha256[:12]}..) than {infos[0].path!r} ({infos[0].tokenizer_sha256[:12]}..); "
                "a mixture must share one tokenizer: prepare all its datasets with the same tokenizer.model."
            )
    for info in infos:
        if info.record_kind == "pair":
            raise DataFormatError(f"dataset {info.path!r} holds preference pairs; train it with a pair objective "
                                  "(train.objective: reward, dpo, ipo or simpo), which reads it with jaxlm.data.pairs")
        if info.split(split).documents == 0:
            raise DataFormatError(f"split {split!r} of dataset {info.path!r} has no documents; re-run data_prep with more data.")

    masked = any(info.record_kind == "tokens_mask" for info in infos)
    streams = []
    for index, info in enumerate(infos):
        docs = grain.MapDataset.source(DocumentSource(info, split))
        if masked and info.record_kind == "tokens":  # one record layout per mixture: every token trained
            docs = docs.map(_all_trained)
        if shuffle:  # grain reshuffles each epoch with seed + epoch
            docs = docs.shuffle(seed=_source_seed(seed, index))
        if num_epochs != 1:
            docs = docs.repeat(num_epochs)
        streams.append(docs[process_index::process_count])
    docs = streams[0] if len(streams) == 1 else MixedDocuments(streams, [w for _, w in sources])

    if shuffle_rows > 0:
        rows = PackedBatchDataset(docs, seq_len=seq_len, rows=1, open_reader=_DocumentReader(worker_count),
                                  whole_examples=masked)
        rows = rows.map(_first_row)
        # One row order per process: a source with fewer documents than processes (Tiny Shakespeare
        # is one) gives every process the same rows, and a shared order then repeated them across
        # the global batch, halving it on two processes.
        row_seed = _source_seed(seed, 10**6 + process_index) % 2**31
        rows = grain.experimental.WindowShuffleIterDataset(rows, window_size=shuffle_rows, seed=row_seed)
        batches = rows.batch(batch_rows, drop_remainder=False)
    else:
        batches = PackedBatchDataset(docs, seq_len=seq_len, rows=batch_rows, open_reader=_DocumentReader(worker_count),
                                     whole_examples=masked)
    if prefetch:
        batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
    fingerprint = {
        "sources": [_describe(info, split, float(w)) for info, (_, w) in zip(infos, sources)],
        "split": split,
        "seq_len": int(seq_len),
        "batch_rows": int(batch_rows),
        "seed": int(seed),
        "process_index": int(process_index),
        "process_count": int(process_count),
        "num_epochs": None if num_epochs is None else int(num_epochs),
        "shuffle": bool(shuffle),
        "shuffle_rows": int(shuffle_rows),
    }
    return Loader(batches, json.loads(json.dumps(fingerprint)))  # the form a restored state compares equal to


def _all_trained(tokens: np.ndarray) -> np.ndarray:
    out = np.empty(len(tokens), fmt.MASKED_TOKEN)
    out["token"], out["mask"] = tokens, 1
    return out


def _first_row(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value[0] for key, value in batch.items()}


class _DocumentReader:
    """Opens an in-order iterator over docs[start:]: reader threads, or Grain worker processes.

    Documents travel in groups of `group` (tokens concatenated + lengths): one hand-over between
    processes per group instead of per document.
    """

    def __init__(self, worker_count: int, group: int = 32):
        self._worker_count, self._group = worker_count, group

    def __call__(self, docs: grain.MapDataset, start: int) -> Iterator[np.ndarray]:
        # Each worker reads groups w, w + W, ...; Grain hands their outputs back round-robin, which
        # restores the original order.
        groups = docs[start:].batch(self._group, batch_fn=_join_documents)
        return _DocumentsOfGroups(iter(reader_options(groups, self._worker_count)))


def reader_options(ds: grain.MapDataset, worker_count: int) -> grain.IterDataset:
    """`ds` read in order by reader threads, or by `worker_count` Grain worker processes."""
    out = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if worker_count:
        if not flags.FLAGS.is_parsed():  # grain 0.2.18 reads an absl flag here outside absl.app (google/grain#1355)
            flags.FLAGS.mark_as_parsed()
        out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=4))
    return out


def _join_documents(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(docs), np.array([len(d) for d in docs], np.int64)


class _DocumentsOfGroups:
    """Iterates the documents of joined groups; `close` stops the Grain iterator (and its workers)."""

    def __init__(self, groups):
        self._groups = groups
        self._docs = iter(())

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        for doc in self._docs:
            return doc
        tokens, lengths = next(self._groups)
        self._docs = iter(np.split(tokens, np.cumsum(lengths)[:-1]))
        return next(self._docs)

    def close(self) -> None:
        self._groups.close()


def _source_seed(seed: int, index: int) -> int:
    """Independent 32-bit shuffle seeds per source; grain adds the epoch to them."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _describe(info: DatasetInfo, split: str, weight: float) -> dict[str, Any]:
    """What identifies a source's document sequence (not its path: a dataset may move)."""
    s = info.split(split)
    return {
        "documents": s.documents,
        "tokens": s.tokens,
        "shards_sha256": hashlib.sha256(" ".join(str(shard.sha256) for shard in s.shards).encode()).hexdigest(),
        "weight": weight,
    }


def _check_args(sources, split, seq_len, batch_rows, seed, process_index, process_count, num_epochs, worker_count, prefetch):
    problems = []
    if not sources:
        problems.append("sources is empty: give at least one (dataset folder, weight) pair")
    for entry in sources:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
            problems.append(f"source {entry!r} is not a (dataset folder, weight) pair")
        elif not (isinstance(entry[1], (int, float)) and entry[1] > 0 and np.isfinite(entry[1])):
            problems.append(f"weight {entry[1]!r} of {entry[0]!r} must be a positive number")
    if split not in ("train", "val"):
        problems.append(f"split {split!r} must be 'train' or 'val'")
    for name, value, low in (("seq_len", seq_len, 1), ("batch_rows", batch_rows, 1), ("process_count", process_count, 1),
                             ("seed", seed, 0), ("worker_count", worker_count, 0), ("prefetch", prefetch, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            problems.append(f"{name}={value!r} must be an integer >= {low}")
    if not (isinstance(process_index, (int, np.integer)) and 0 <= process_index < process_count):
        problems.append(f"process_index={process_index!r} must be in [0, process_count={process_count})")
    if num_epochs is not None and not (isinstance(num_epochs, (int, np.integer)) and num_epochs >= 1):
        problems.append(f"num_epochs={num_epochs!r} must be None (repeat forever) or an integer >= 1")
    if isinstance(seed, int) and seed >= 2**32:
        problems.append(f"seed={seed} must be < 2**32")
    if problems:
        raise ValueError("build_loader: " + "; ".join(problems))
