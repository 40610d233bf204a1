"""Preference pairs for the trainer: pair datasets (record_kind "pair") -> batches of chosen and
rejected rows.

A batch of P pairs is 2P rows, each pair's two rows side by side: row 2i is pair i's chosen
sequence, row 2i+1 its rejected one (so a pair's rows stay on one device when the rows are split
over the mesh's batch axes in even blocks). A row holds one whole sequence from position 0, never
packed with others: `inputs` its first seq_len tokens, `targets` the next ones, cut at
seq_len + 1 tokens and padded (token 0, segment 0, loss_mask 0), every field as
`packing.rows_from_stream` makes it; `loss_mask` is 1 on the targets that belong to the final
response. `ref_logp` (float32, (rows, seq_len)) is present when every source stores reference
log-probabilities: each row's total at position 0, zeros elsewhere (an objective sums it over the
length, as it sums a reference model's per-token values computed on the fly). A finite (eval)
stream pads its last batch with empty pairs, which objectives do not count.

Pipeline (Grain): shards -> pairs -> global shuffle, reshuffled every epoch -> repeat -> this
process's part (i::process_count) -> sources interleaved by weight -> batches. The state is the
position in that random-access sequence (loader.Loader), so a resumed run sees the same batches.

`write_reference` copies a pair dataset with a reference model's log-probabilities in its records
(`python -m jaxlm.eval --workdir REF --pairs DIR --reference-logps OUT` computes them).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Sequence

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from jaxlm.data import format as fmt
from jaxlm.data.format import DataFormatError
from jaxlm.data.loader import Loader, _check_args, _describe, _source_seed, reader_options
from jaxlm.data.mixing import MixedDocuments
from jaxlm.data.packing import rows_from_stream
from jaxlm.data.shards import DocumentSource, open_dataset, sha256_file

WRITER_OPTIONS = "group_size:1"  # one record per chunk, as data_prep writes shards (fast random access)
PAIR_FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")
REFERENCE_FIELD = "ref_logp"


def sequence_row(seq: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    """One MASKED_TOKEN sequence (None: an empty row) -> the five (seq_len,) int32 fields."""
    tokens = np.zeros(seq_len + 1, np.int64)
    doc_ids = np.full(seq_len + 1, -1, np.int64)
    trained = np.zeros(seq_len + 1, bool)
    if seq is not None:
        n = min(len(seq), seq_len + 1)
        tokens[:n], doc_ids[:n], trained[:n] = seq["token"][:n], 0, seq["mask"][:n].astype(bool)
    return {k: v[0] for k, v in rows_from_stream(tokens, doc_ids, 1, seq_len, trained).items()}


def pair_rows(pairs: Sequence[fmt.Pair], *, pairs_per_batch: int, seq_len: int,
              reference: bool) -> dict[str, np.ndarray]:
    """Up to `pairs_per_batch` pairs -> {field: (2 * pairs_per_batch, seq_len)}, chosen/rejected
    interleaved; missing pairs (the end of a finite stream) are empty rows."""
    rows = []
    for i in range(pairs_per_batch):
        pair = pairs[i] if i < len(pairs) else None
        rows += [sequence_row(None if pair is None else pair.chosen, seq_len),
                 sequence_row(None if pair is None else pair.rejected, seq_len)]
    batch = {k: np.stack([r[k] for r in rows]) for k in PAIR_FIELDS}
    if reference:
        ref = np.zeros((2 * pairs_per_batch, seq_len), np.float32)
        for i, pair in enumerate(pairs[:pairs_per_batch]):
            ref[2 * i:2 * i + 2, 0] = pair.reference
        batch[REFERENCE_FIELD] = ref
    return batch


def build_pair_loader(
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
) -> Loader:
    """Batches of `batch_rows` rows (batch_rows / 2 pairs) for this process; the arguments as
    loader.build_loader's. Every source must be a pair dataset of one tokenizer."""
    _check_args(sources, split, seq_len, batch_rows, seed, process_index, process_count, num_epochs, worker_count, prefetch)
    if batch_rows % 2:
        raise ValueError(f"build_pair_loader: batch_rows={batch_rows} must be even (a chosen and a rejected row per pair)")
    infos = [open_dataset(path, model_vocab_size, verify=verify) for path, _ in sources]
    for info in infos:
        if info.record_kind != "pair":
            raise DataFormatError(f"dataset {info.path!r} holds {info.record_kind!r} records, not preference pairs; "
                                  "prepare pairs with a data_prep hh_rlhf, pairs or alpaca_eval source")
        if info.tokenizer_sha256 != infos[0].tokenizer_sha256:
            raise DataFormatError(f"datasets {infos[0].path!r} and {info.path!r} were tokenized with different "
                                  "tokenizers; a mixture must share one tokenizer.model")
        if info.split(split).documents == 0:
            raise DataFormatError(f"split {split!r} of dataset {info.path!r} has no pairs; re-run data_prep with more data.")
    reference = all(has_reference(info.manifest) for info in infos)
    streams = []
    for index, info in enumerate(infos):
        pairs = grain.MapDataset.source(DocumentSource(info, split))
        if shuffle:
            pairs = pairs.shuffle(seed=_source_seed(seed, index))
        if num_epochs != 1:
            pairs = pairs.repeat(num_epochs)
        streams.append(pairs[process_index::process_count])
    pairs = streams[0] if len(streams) == 1 else MixedDocuments(streams, [w for _, w in sources])
    to_rows = functools.partial(pair_rows, pairs_per_batch=batch_rows // 2, seq_len=seq_len, reference=reference)
    batches = reader_options(pairs.batch(batch_rows // 2, drop_remainder=False, batch_fn=to_rows), worker_count)
    if prefetch:
        batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
    fingerprint = {
        "sources": [_describe(info, split, float(w)) for info, (_, w) in zip(infos, sources)],
        "split": split, "seq_len": int(seq_len), "batch_rows": int(batch_rows), "seed": int(seed),
        "process_index": int(process_index), "process_count": int(process_count),
        "num_epochs": None if num_epochs is None else int(num_epochs), "shuffle": bool(shuffle), "pairs": True,
    }
    return Loader(batches, json.loads(json.dumps(fingerprint)))


def has_reference(manifest: dict) -> bool:
    """Whether a pair dataset's records carry reference log-probabilities (its `reference` block)."""
    return bool(manifest.get("reference"))


def real_pair_count(batch: dict) -> int:
    """Pairs of a batch that are not padding (their chosen row has a token)."""
    return int(np.sum(np.any(batch["segment_ids"][0::2] > 0, axis=-1)))


def write_reference(src: str, out: str, logprobs: dict[str, np.ndarray], block: dict) -> dict:
    """Copies pair dataset `src` to `out` with each record's reference log-probabilities: per split,
    a (pairs, 2) array in the split's record order (shard by shard). `block` ({"model", "seq_len",
    ...}) becomes the manifest's `reference`. Returns the new manifest."""
    info = open_dataset(src)
    if info.record_kind != "pair":
        raise DataFormatError(f"{src!r} holds {info.record_kind!r} records, not preference pairs")
    if os.path.abspath(out) == info.path:
        raise DataFormatError("the output folder must differ from the pair dataset it copies")
    manifest = json.loads(json.dumps(info.manifest))
    os.makedirs(os.path.join(out, fmt.SHARD_DIR), exist_ok=True)
    for name in os.listdir(info.path):  # tokenizer, chat template, report: everything but shards and manifest
        path = os.path.join(info.path, name)
        if os.path.isfile(path) and name != fmt.MANIFEST:
            shutil.copyfile(path, os.path.join(out, name))
    for split, spec in manifest["splits"].items():
        values = logprobs.get(split)
        if values is None or len(values) != spec["documents"]:
            raise DataFormatError(f"split {split!r} has {spec['documents']} pairs but {0 if values is None else len(values)} "
                                  "reference values were given")
        source, index = DocumentSource(info, split), 0
        for entry in spec["shards"]:
            path = os.path.join(out, entry["path"])
            writer = ArrayRecordWriter(path, WRITER_OPTIONS)
            for _ in range(entry["records"]):
                pair = source[index]
                writer.write(fmt.encode_pair_record(pair.chosen["token"], pair.chosen["mask"], pair.rejected["token"],
                                                    pair.rejected["mask"], info.dtype, values[index]))
                index += 1
            writer.close()
            entry["sha256"], entry["bytes"] = sha256_file(path), os.path.getsize(path)
    manifest["reference"] = block
    with open(os.path.join(out, fmt.MANIFEST), "w", encoding="utf-8") as f:  # last: the folder is complete
        json.dump(manifest, f, indent=2)
    return manifest
