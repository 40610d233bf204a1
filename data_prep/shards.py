"""Encode documents into records on every core, and write them to ArrayRecord shards.

A record is `jaxlm.data.format.encode_record([BOS] + ids + [EOS])`: one per document, so an empty
document becomes a record holding only EOS (and BOS). In an instruction dataset (`chat` given)
every record is `encode_masked_record(ids, mask)`: a conversation as its chat template renders it
(no BOS/EOS beyond what the template writes) with the loss mask of `jaxlm.data.chat`, cut to
`max_tokens` (tail dropped; an example left with no trained token is not written); plain documents
mixed in keep [BOS] + ids + [EOS] with every token trained, under the same cut. In a pair dataset
every record is `encode_pair_record`: prompt + chosen and prompt + rejected, each rendered by the
template, masked on the final response and cut to `max_tokens` around the response (`keep_response`:
the prompt's beginning goes first). Shards hold whole documents of one source
and one split; a group's documents go round-robin over its shards in stream order, so the output
is a pure function of the input order (byte-identical across runs and worker counts).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import sentencepiece as spm
from array_record.python.array_record_module import ArrayRecordWriter

from data_prep.manifest import sha256_file
from jaxlm.data import format
from jaxlm.data.chat import ChatTemplate, encode_with_spans

WRITER_OPTIONS = "group_size:1"  # one record per chunk: what Grain needs for fast random access
BATCH_BYTES = 1 << 20  # text per task sent to a worker: large enough to amortise the hand-off

Meta = TypeVar("Meta")


@dataclasses.dataclass(frozen=True)
class ChatEncoding:
    """How an instruction dataset's records are made (picklable, sent to every worker)."""

    template: ChatTemplate
    max_tokens: int


# per record: (bytes, or None when the example is dropped; unk tokens; what happened to it:
# {"tokens", "trained", "truncated", "dropped", "roundtrip"} for instruction datasets, else {})
Encoded = tuple[bytes | None, int, dict]


class RecordEncoder:
    """Text or conversations -> record bytes with one SentencePiece model; the unit each worker process runs."""

    def __init__(self, model_proto: bytes, add_bos: bool, chat: ChatEncoding | None = None):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.add_bos = add_bos
        self.chat = chat
        self.dtype = format.token_dtype(self.sp.vocab_size())
        self.unk_id = self.sp.unk_id()

    def __call__(self, payloads: list[str | list[dict] | dict]) -> list[Encoded]:
        """A text is a document; a list of messages is a conversation (instruction datasets only); a
        dict {prompt, chosen, rejected} is a preference pair (pair datasets)."""
        if self.chat is None:
            # num_threads=1: the parallelism is the process pool, one core per worker
            ids = self.sp.encode(payloads, add_bos=self.add_bos, add_eos=True, num_threads=1)
            return [(format.encode_record(row, self.dtype), row.count(self.unk_id), {}) for row in ids]
        return [self._pair(p) if isinstance(p, dict) else self._masked(p) for p in payloads]

    def _pair(self, pair: dict) -> Encoded:
        """Prompt + chosen and prompt + rejected, each cut to max_tokens by `keep_response`, masked on
        the final response only; dropped when either side keeps no response token."""
        template, limit = self.chat.template, self.chat.max_tokens
        sides, info = [], {"tokens": 0, "kept": 0, "trained": 0, "truncated": False, "roundtrip": True}
        for response in (pair["chosen"], pair["rejected"]):
            messages = pair["prompt"] + [{"role": "assistant", "content": response}]
            text, spans = template.trained_spans(messages)
            ids, mask = encode_with_spans(self.sp, text, spans[-1:])  # earlier assistant turns are prompt
            info["roundtrip"] &= self.sp.decode(ids.tolist()) == text
            info["tokens"] += len(ids)
            if len(ids) > limit:
                ids, mask = keep_response(ids, mask, limit)
                info["truncated"] = True
            info["kept"] += len(ids)
            info["trained"] += int(mask.sum())
            sides.append((ids, mask))
        info["dropped"] = not all(mask.any() for _, mask in sides)
        (c, cm), (r, rm) = sides
        record = None if info["dropped"] else format.encode_pair_record(c, cm, r, rm, self.dtype)
        unk = sum(int((ids == self.unk_id).sum()) for ids, _ in sides)
        return record, unk, info

    def _masked(self, payload: str | list[dict]) -> Encoded:
        if isinstance(payload, str):
            ids = np.array(self.sp.encode(payload, add_bos=self.add_bos, add_eos=True), np.int64)
            mask, roundtrip = np.ones(len(ids), np.uint8), None
        else:
            ids, mask = self.chat.template.encode(self.sp, payload)
            roundtrip = self.sp.decode(ids.tolist()) == self.chat.template.render(payload)
        info = {"tokens": len(ids), "truncated": len(ids) > self.chat.max_tokens, "roundtrip": roundtrip}
        ids, mask = ids[: self.chat.max_tokens], mask[: self.chat.max_tokens]
        info.update(trained=int(mask.sum()), dropped=not mask.any(), kept=len(ids))
        record = None if info["dropped"] else format.encode_masked_record(ids, mask, self.dtype)
        return record, int((ids == self.unk_id).sum()), info


def keep_response(ids: np.ndarray, mask: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """A prompt + response sequence cut to `limit` tokens around its response (the first masked
    token on): the prompt loses its beginning, keeping its last tokens (all of them when they fit
    beside the response, else at least half the limit), then the response loses its tail. A long
    conversation keeps the turns that lead to the response, as TRL's keep_end prompt truncation."""
    start = int(np.argmax(mask)) if mask.any() else len(ids)
    keep_prompt = min(start, max(limit - (len(ids) - start), limit // 2))
    first = start - keep_prompt
    return ids[first:first + limit], mask[first:first + limit]


_worker_encoder: RecordEncoder | None = None


def _init_worker(model_proto: bytes, add_bos: bool, chat: ChatEncoding | None) -> None:
    global _worker_encoder
    _worker_encoder = RecordEncoder(model_proto, add_bos, chat)


def _encode_in_worker(payloads: list) -> list[Encoded]:
    return _worker_encoder(payloads)


class EncoderPool:
    """`workers` processes, each holding the model once; `map` encodes batches, results in input order.

    Workers are spawned (not forked: they start clean, without inherited threads or locks), so a
    script that uses this must guard its entry point with `if __name__ == "__main__":`.
    With workers <= 1 everything runs in this process.
    """

    def __init__(self, model_proto: bytes, add_bos: bool, workers: int, chat: ChatEncoding | None = None):
        self.workers = workers
        self._local = RecordEncoder(model_proto, add_bos, chat) if workers <= 1 else None
        self._pool = None
        if workers > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(workers, initializer=_init_worker, initargs=(model_proto, add_bos, chat))

    def map(self, batches: Iterable[tuple[Meta, list]]) -> Iterator[tuple[Meta, list[Encoded]]]:
        """At most 2 * workers batches are in flight, so memory stays bounded however large the input."""
        if self._pool is None:
            for meta, texts in batches:
                yield meta, self._local(texts)
            return
        pending: collections.deque = collections.deque()
        for meta, texts in batches:
            pending.append((meta, self._pool.apply_async(_encode_in_worker, (texts,))))
            if len(pending) >= 2 * self.workers:
                meta_done, result = pending.popleft()
                yield meta_done, result.get()
        while pending:
            meta_done, result = pending.popleft()
            yield meta_done, result.get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "EncoderPool":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None and exc[0] is not None:
            self._pool.terminate()  # an error: do not wait for queued work
        self.close()


def payload_chars(payload: str | list[dict] | dict) -> int:
    """Characters of text in a document, conversation or pair (what batches are sized by)."""
    if isinstance(payload, str):
        return len(payload)
    if isinstance(payload, dict):
        return payload_chars(payload["prompt"]) + len(payload["chosen"]) + len(payload["rejected"])
    return sum(len(m["content"]) for m in payload)


def batched(items: Iterable[tuple[Any, str | list[dict]]], max_bytes: int = BATCH_BYTES,
            max_items: int = 4096) -> Iterator[tuple[list[Any], list]]:
    """Groups (meta, text or conversation) pairs into batches of about max_bytes of text."""
    metas, texts, size = [], [], 0
    for meta, text in items:
        metas.append(meta)
        texts.append(text)
        size += payload_chars(text)
        if size >= max_bytes or len(texts) >= max_items:
            yield metas, texts
            metas, texts, size = [], [], 0
    if texts:
        yield metas, texts


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """The shards of one (split, source) group: indices first..first+count-1 of the split's total."""

    split: str
    source: str
    first: int
    count: int
    total: int


def shard_count(text_bytes: int, documents: int, target_mb: float) -> int:
    """Shards for one group: about target_mb of text each, never more than it has documents."""
    return max(1, min(documents, math.ceil(text_bytes / (target_mb * 1e6))))


def plan_shards(groups: dict[tuple[str, str], dict[str, int]], sources: list[str], target_mb: float) -> list[GroupPlan]:
    """Shard indices per non-empty (split, source) group, in split then source order."""
    plan = []
    for split in format.SPLITS:
        counts = [(src, shard_count(groups[(split, src)]["bytes"], groups[(split, src)]["documents"], target_mb))
                  for src in sources if groups.get((split, src), {}).get("documents")]
        total, first = sum(c for _, c in counts), 0
        for src, count in counts:
            plan.append(GroupPlan(split, src, first, count, total))
            first += count
    return plan


class ShardGroupWriter:
    """Writes one group's records round-robin over its shards; closes to manifest entries."""

    def __init__(self, dataset_dir: str, group: GroupPlan, dtype: np.dtype, masked: bool = False):
        self.paths = [format.shard_name(group.split, group.first + i, group.total) for i in range(group.count)]
        self.source, self.itemsize = group.source, dtype.itemsize + int(masked)  # bytes per token
        self._dir = dataset_dir
        self._writers = [ArrayRecordWriter(os.path.join(dataset_dir, p), WRITER_OPTIONS) for p in self.paths]
        self._records = [0] * group.count
        self._tokens = [0] * group.count
        self._next = 0

    def write(self, record: bytes, tokens: int | None = None) -> None:
        """tokens: the record's token count when its bytes do not say it (pair records)."""
        i = self._next
        self._writers[i].write(record)
        self._records[i] += 1
        self._tokens[i] += len(record) // self.itemsize if tokens is None else tokens
        self._next = (i + 1) % len(self._writers)

    def close(self) -> list[dict[str, Any]]:
        """Closes the files; returns their manifest entries (path, source, sha256, records, tokens, bytes)."""
        shards = []
        for path, writer, records, tokens in zip(self.paths, self._writers, self._records, self._tokens):
            writer.close()
            full = os.path.join(self._dir, path)
            shards.append({"path": path, "source": self.source, "sha256": sha256_file(full),
                           "records": records, "tokens": tokens, "bytes": os.path.getsize(full)})
        return shards


def write_shards(
    plan: list[GroupPlan],
    read_group: Callable[[str, str], Iterable[tuple[str, str, list[dict] | None]]],
    dataset_dir: str,
    dtype: np.dtype,
    model_proto: bytes,
    add_bos: bool,
    workers: int,
    on_record: Callable[[str, str, str, str, bytes | None, int, dict], None],
    chat: ChatEncoding | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Encodes every group's (doc id, text, messages or None) stream and writes its shards; returns
    manifest entries per split. With `chat`, every record is a masked record (an instruction dataset).

    `on_record(split, source, doc_id, text, record or None, unk_tokens, info)` sees every document, in order.
    """
    def items():
        for group in plan:
            for doc_id, text, messages in read_group(group.split, group.source):
                yield (group, doc_id, text), (text if messages is None else messages)

    written: dict[str, list[dict[str, Any]]] = {split: [] for split in format.SPLITS}
    writer, current = None, None
    with EncoderPool(model_proto, add_bos, workers, chat) as pool:
        for metas, results in pool.map(batched(items())):
            for (group, doc_id, text), (record, unk, info) in zip(metas, results):
                if group != current:
                    if writer is not None:
                        written[current.split] += writer.close()
                    writer, current = ShardGroupWriter(dataset_dir, group, dtype, chat is not None), group
                if record is not None:
                    writer.write(record, info.get("kept"))
                on_record(group.split, group.source, doc_id, text, record, unk, info)
    if writer is not None:
        written[current.split] += writer.close()
    return written
