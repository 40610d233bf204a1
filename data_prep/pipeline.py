"""The data_prep pipeline: stages over a stream of Documents, then tokenizer, encoding, shards, manifest.

    read sources -> [document stages: clean, filter, dedup, ...] -> split -> spool (disk)   (`documents`)
      -> tokenizer: train on a sample of the train split, or install an existing model
      -> encode on every core -> ArrayRecord shards -> manifest.json (last, atomically)

A stage is any object with a `name` and `__call__(docs, report) -> docs` (see `Stage`); it counts
what it drops (`report.skip(reason, where)` or `report.remove(doc, rule)`) and what it changes
(`report.repair(reason, where, n)`); the pipeline counts what it passes on. The stream is read
once; the spool (JSONL, deleted at the end) lets the tokenizer see the train split before
anything is encoded.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import sentencepiece as spm

from data_prep import shards, sources, tokenizer
from data_prep.config import Config
from data_prep.document import Document
from data_prep.errors import DataPrepError, SourceError
from data_prep.manifest import StageReport, write_json_atomic
from data_prep.split import SplitStage
from jaxlm.data import format

WORK_DIR = ".work"  # the spool and other scratch files, inside the output folder, removed at the end


class Stage(Protocol):
    name: str

    def __call__(self, docs: Iterable[Document], report: StageReport) -> Iterator[Document]: ...


def document_stages(cfg: Config) -> list[Stage]:
    """The stages between reading and the split: cleaning, quality filters, dedup, decontamination.

    None yet; each new stage is appended here (in the order it should run) with its config section.
    """
    return []


def documents(cfg: Config, files: dict[str, list[str]], reports: list[StageReport]) -> Iterator[Document]:
    """The document stream before the split: every source read, then the document stages.

    Appends one StageReport per stage to `reports`. A task-sharded runner can take this place:
    task `rank` of `world` reads `sources.read_source(src, files[src.name][rank::world], report)`.
    """
    reports.append(StageReport("read"))
    docs = _read(cfg, files, reports[-1])
    for stage in document_stages(cfg):
        reports.append(StageReport(stage.name))
        docs = _counted(stage(docs, reports[-1]), reports[-1])
    return docs


def prepare(cfg: Config, overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the whole pipeline for `cfg` and returns the manifest it wrote to `cfg.output`.

    A folder that already holds a dataset made with the same config is left as it is (pass
    overwrite=True to rebuild). Encoding spawns worker processes: scripts calling this must guard
    their entry point with `if __name__ == "__main__":`.
    """
    start = time.perf_counter()
    out = cfg.output
    files = {src.name: sources.resolve_files(src) for src in cfg.sources}  # missing paths fail here, before work
    finished = _prepare_output(cfg, overwrite)
    if finished is not None:
        log(f"{out} is up to date (same config); pass --overwrite to rebuild it")
        return finished
    work = os.path.join(out, WORK_DIR)
    os.makedirs(work)
    try:
        manifest = _run(cfg, files, work, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest["elapsed_seconds"] = round(time.perf_counter() - start, 2)
    write_json_atomic(os.path.join(out, format.MANIFEST), manifest)
    return manifest


def _run(cfg: Config, files: dict[str, list[str]], work: str, log: Callable[[str], None]) -> dict[str, Any]:
    out, tok = cfg.output, cfg.tokenizer
    reports: list[StageReport] = []
    docs = documents(cfg, files, reports)
    split = SplitStage(cfg)
    reports.append(StageReport(split.name))
    docs = _counted(split(docs, reports[-1]), reports[-1])

    # pass 1: spool every document by (split, source); sample the train split for the tokenizer
    t = time.perf_counter()
    sampler = None if tok.path else tokenizer.SentenceSampler(
        tok.input_sentence_size, tok.max_sentence_length, cfg.seed, track_characters=tok.model_type == "char")
    with Spool(work) as spool:
        for doc in docs:
            spool.write(doc)
            if sampler is not None and doc.meta["split"] == "train":
                sampler.add(doc.text)
    _check_sources(cfg, reports[0])
    if not any(spool.groups.get(("train", s.name)) for s in cfg.sources):
        raise DataPrepError("no document ended up in the train split; lower split.val_fraction or add data")
    log(f"read {reports[0].documents:,} documents ({reports[0].bytes / 1e6:.2f} MB) from {len(cfg.sources)} "
        f"source(s) in {time.perf_counter() - t:.1f} s")
    for report in reports:
        for line in report.warnings():
            log(f"warning: {line}")

    # tokenizer
    t = time.perf_counter()
    model_path = os.path.join(out, format.TOKENIZER)
    if tok.path:
        training = tokenizer.install_existing(tok, model_path)
    else:
        training = tokenizer.train(tok, sampler, model_path, os.path.join(out, "tokenizer.log"), cfg.seed)
    tok_info = tokenizer.describe(model_path)
    loaded = training.get("trainer_log", {}).get("sentences_loaded")
    if loaded is not None and loaded != training["sentences_sampled"]:
        log(f"warning: SentencePiece trained on {loaded:,} of the {training['sentences_sampled']:,} sentences given "
            f"(see {out}/tokenizer.log); the dataset itself is complete")
    log(f"tokenizer: {tok_info['model_type']}, {tok_info['vocab_size']:,} pieces "
        f"({'installed' if tok.path else 'trained'} in {time.perf_counter() - t:.1f} s)")

    # pass 2: encode in parallel and write the shards
    t = time.perf_counter()
    encoded = _encode_and_write(cfg, spool, model_path, tok_info, log)
    reports.append(encoded.report)
    log(f"encoded {encoded.report.documents:,} documents into {encoded.report.extra['tokens']:,} tokens "
        f"on {encoded.report.extra['workers']} process(es) in {time.perf_counter() - t:.1f} s")
    return _manifest(cfg, files, tok_info, training, reports, encoded)


def _cores() -> int:
    """Cores this process may use (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _counted(docs: Iterable[Document], report: StageReport) -> Iterator[Document]:
    for doc in docs:
        report.documents += 1
        report.bytes += len(doc.text.encode("utf-8"))
        yield doc


def _read(cfg: Config, files: dict[str, list[str]], report: StageReport) -> Iterator[Document]:
    per_source = report.extra.setdefault("sources", {})
    for src in cfg.sources:
        counts = per_source[src.name] = {"files": len(files[src.name]), "documents": 0, "bytes": 0}
        for doc in sources.read_source(src, files[src.name], report):
            nbytes = len(doc.text.encode("utf-8"))
            counts["documents"] += 1
            counts["bytes"] += nbytes
            report.documents += 1
            report.bytes += nbytes
            yield doc


def _check_sources(cfg: Config, read: StageReport) -> None:
    for name, counts in read.extra["sources"].items():
        if counts["documents"] == 0:
            why = "; ".join(read.warnings()) or "its files hold no text"
            raise SourceError(f"source {name!r} produced no documents ({why}); check its paths and text_field")


class Spool:
    """Documents on disk as JSONL, one file per (split, source), with their counts."""

    def __init__(self, work_dir: str):
        self.dir = work_dir
        self.groups: dict[tuple[str, str], dict[str, int]] = {}  # (split, source) -> documents, bytes
        self._files: dict[tuple[str, str], Any] = {}

    def _path(self, key: tuple[str, str]) -> str:
        return os.path.join(self.dir, f"{key[0]}-{key[1]}.jsonl")

    def write(self, doc: Document) -> None:
        key = (doc.meta["split"], doc.source)
        if key not in self._files:
            self._files[key] = open(self._path(key), "w", encoding="utf-8")
            self.groups[key] = {"documents": 0, "bytes": 0}
        self._files[key].write(json.dumps([doc.id, doc.text]) + "\n")  # ASCII-safe even for odd ids
        self.groups[key]["documents"] += 1
        self.groups[key]["bytes"] += len(doc.text.encode("utf-8"))

    def read(self, split: str, source: str) -> Iterator[tuple[str, str]]:
        with open(self._path((split, source)), encoding="utf-8") as f:
            for line in f:
                doc_id, text = json.loads(line)
                yield doc_id, text

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():
            f.close()


class EncodeStats:
    """Counts of the encode pass per source and split, plus the round-trip check of the first records."""

    def __init__(self, cfg: Config, sp: spm.SentencePieceProcessor, dtype: np.dtype):
        self.sp, self.dtype = sp, dtype
        self.check_limit = cfg.tokenizer.roundtrip_check_documents
        self.text_start = int(cfg.tokenizer.add_bos)  # records are [BOS] + text tokens + EOS
        self.report = StageReport("encode", extra={"empty_documents": 0, "tokens": 0})
        self.per_source = {s.name: {"documents": 0, "bytes": 0, "tokens": 0, "unk_tokens": 0,
                                    "splits": {k: {"documents": 0, "tokens": 0} for k in format.SPLITS}}
                           for s in cfg.sources}
        self.splits = {k: {"documents": 0, "tokens": 0, "shards": []} for k in format.SPLITS}
        self.checks = {k: {"documents_checked": 0, "mismatched": 0, "examples": []} for k in format.SPLITS}
        self.report.extra["roundtrip_check"] = self.checks

    def add(self, split: str, source: str, doc_id: str, text: str, record: bytes, unk: int) -> None:
        tokens = len(record) // self.dtype.itemsize
        nbytes = len(text.encode("utf-8"))
        src = self.per_source[source]
        for counts in (src, src["splits"][split], self.splits[split]):
            counts["documents"] += 1
            counts["tokens"] += tokens
        src["bytes"] += nbytes
        src["unk_tokens"] += unk
        self.report.documents += 1
        self.report.bytes += nbytes
        self.report.extra["tokens"] += tokens
        self.report.extra["empty_documents"] += not text
        if unk:
            self.report.repair("characters_encoded_as_unk", doc_id, unk)
        check = self.checks[split]
        if check["documents_checked"] < self.check_limit:
            check["documents_checked"] += 1
            ids = format.decode_record(record, self.dtype)[self.text_start : -1].tolist()
            if self.sp.decode(ids) != text:
                check["mismatched"] += 1
                if len(check["examples"]) < 10:
                    check["examples"].append(doc_id)

    def warnings(self) -> list[str]:
        lines = self.report.warnings()
        for split, check in self.checks.items():
            if check["mismatched"]:
                lines.append(f"{check['mismatched']} of the first {check['documents_checked']} {split} documents do not "
                             f"decode back to their text (e.g. {check['examples'][0]}): the tokenizer changes text")
        lines += [f"the {split} split is empty" for split, counts in self.splits.items() if not counts["documents"]]
        return lines


def _encode_and_write(cfg: Config, spool: Spool, model_path: str, tok_info: dict, log) -> EncodeStats:
    with open(model_path, "rb") as f:
        model_proto = f.read()
    dtype = format.token_dtype(tok_info["vocab_size"])
    stats = EncodeStats(cfg, spm.SentencePieceProcessor(model_proto=model_proto), dtype)
    order = [s.name for s in cfg.sources]
    plan = shards.plan_shards(spool.groups, order, cfg.shards.target_mb)
    workers = cfg.workers or _cores()
    stats.report.extra["workers"] = workers
    written = shards.write_shards(plan, spool.read, cfg.output, dtype, model_proto, cfg.tokenizer.add_bos, workers, stats.add)
    for split, entries in written.items():
        stats.splits[split]["shards"] = entries
    for line in stats.warnings():
        log(f"warning: {line}")
    return stats


def _manifest(cfg: Config, files, tok_info, training, reports, encoded: EncodeStats) -> dict[str, Any]:
    specials = 1 + int(cfg.tokenizer.add_bos)  # tokens per record that are not text

    def bytes_per_token(counts) -> float | None:
        text_tokens = counts["tokens"] - specials * counts["documents"]
        return round(counts["bytes"] / text_tokens, 4) if text_tokens > 0 else None

    source_entries = [{"name": s.name, "type": s.type, "weight": s.weight, "files": len(files[s.name]),
                       **encoded.per_source[s.name]} for s in cfg.sources]
    total = {"documents": encoded.report.documents, "bytes": encoded.report.bytes, "tokens": encoded.report.extra["tokens"]}
    return {
        "format_version": format.FORMAT_VERSION,
        "dtype": encoded.dtype.name,
        "tokenizer": {**tok_info, "add_bos": cfg.tokenizer.add_bos},
        "sources": source_entries,
        "splits": encoded.splits,
        "stages": [r.to_json() for r in reports],
        "compression": {
            "unit": "UTF-8 bytes per token, BOS/EOS not counted",
            "bytes_per_token": bytes_per_token(total),
            "per_source": {s["name"]: bytes_per_token(s) for s in source_entries},
        },
        "tokenizer_training": training,
        "config": cfg.to_dict(),
        "versions": {"python": platform.python_version(), "sentencepiece": spm.__version__, "numpy": np.__version__},
    }


def _prepare_output(cfg: Config, overwrite: bool) -> dict[str, Any] | None:
    """Makes the output folder ready; returns the existing manifest when it already holds this dataset."""
    out = cfg.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataPrepError(f"output {out!r} is a file; choose a folder, e.g. output=data/my_dataset")
    manifest_path = os.path.join(out, format.MANIFEST)
    if os.path.isfile(manifest_path):
        if not overwrite:
            try:
                with open(manifest_path, encoding="utf-8") as f:
                    existing = json.load(f)
            except (OSError, ValueError):
                existing = {}
            if existing.get("config") == cfg.to_dict():
                return existing
            raise DataPrepError(f"{out!r} already holds a dataset prepared with another config; "
                                "pass --overwrite to replace it, or choose another output=")
        os.remove(manifest_path)  # first: from here on the folder is unfinished
    shard_dir = os.path.join(out, format.SHARD_DIR)
    if os.path.isdir(shard_dir):
        for name in os.listdir(shard_dir):
            if name.endswith(".array_record"):
                os.remove(os.path.join(shard_dir, name))
    for name in (format.TOKENIZER, "tokenizer.log"):
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    shutil.rmtree(os.path.join(out, WORK_DIR), ignore_errors=True)
    os.makedirs(shard_dir, exist_ok=True)
    return None


def summary(manifest: dict[str, Any]) -> str:
    """A short table of what was prepared: per source documents, tokens, bytes per token."""
    rows = [f"{'source':<16}{'weight':>8}{'documents':>12}{'MB':>10}{'tokens':>14}{'bytes/token':>13}"]
    for s in manifest["sources"]:
        bpt = manifest["compression"]["per_source"][s["name"]]
        rows.append(f"{s['name']:<16}{s['weight']:>8g}{s['documents']:>12,}{s['bytes'] / 1e6:>10.2f}{s['tokens']:>14,}"
                    f"{(bpt or 0):>13.3f}")
    for split in format.SPLITS:
        sp_ = manifest["splits"][split]
        rows.append(f"{split}: {sp_['documents']:,} documents, {sp_['tokens']:,} tokens in {len(sp_['shards'])} shard(s)")
    tok = manifest["tokenizer"]
    rows.append(f"tokenizer: {tok['model_type']} {tok['vocab_size']:,} pieces; dtype {manifest['dtype']}; "
                f"{manifest['compression']['bytes_per_token']} bytes/token overall; {manifest.get('elapsed_seconds', 0):.1f} s")
    return "\n".join(rows)
