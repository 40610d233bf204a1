"""The data_prep pipeline: document stages over file-sharded tasks, then tokenizer, encoding, shards, manifest.

    read sources as tasks -> [stages: clean, filter, dedup, decontaminate, mix]   (tasks.py, stages/)
      -> split -> spool (JSONL on disk) -> tokenizer: train on a sample of the train split, or install one
      -> encode on every core -> ArrayRecord shards -> report.md, removed.jsonl.gz -> manifest.json (last)

Instruction sources (data_prep/instruct.py) make an instruction dataset: the chat template is
written beside the tokenizer (chat_template.jinja), its special tokens are added to the tokenizer
when it lacks them, and every record carries a loss mask (record_kind "tokens_mask"). Examples
carry their messages through the stages and the spool; only stages that keep or drop whole
documents may apply to them (config validation says so).

Every step counts what it passes on, removes (with a reason and the place: "file:line" or the
document id) and repairs in a `StageStats`; manifest.json lists them all ("stages") and report.md
shows them as tables. The scratch files live in `<output>/.work`: the spool is deleted when the run
ends, the stages' task files when it succeeds. A killed run, started again, resumes its stages.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import sentencepiece as spm

from data_prep import shards, sources, tasks, tokenizer
from data_prep.config import Config
from data_prep.document import Document
from data_prep.errors import DataPrepError, SourceError
from data_prep.executors import cores
from data_prep.manifest import build_manifest, sha256_file
from data_prep.split import SplitStage
from data_prep.stages import counted
from data_prep.stages.files import atomic_write_json
from data_prep.stages.report import write_report
from data_prep.stats import StageStats
from jaxlm.data import chat as chat_lib
from jaxlm.data import format

WORK_DIR = ".work"  # scratch files inside the output folder (spool, stage tasks), removed at the end
REPORT = "report.md"
REMOVED = "removed.jsonl.gz"  # every removal: {"id": document id or "file:line", "reason": "<stage>:<rule>"}
EXECUTION_KEYS = ("workers", "tasks", "executor")  # how a dataset is made, not what it holds
TRUNCATION = {"example": "keep the first max_tokens tokens",
              "pair": "keep the end of the prompt (at least half of max_tokens when the response is longer), "
                      "then the first max_tokens tokens"}


def prepare(cfg: Config, overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the whole pipeline for `cfg` and returns the manifest it wrote to `cfg.output`.

    A folder that already holds a dataset made with the same config is left as it is (pass
    overwrite=True to rebuild). An unfinished folder (a killed or failed run) is resumed: stage
    tasks that finished are not run again. Stages and encoding spawn worker processes: scripts
    calling this must guard their entry point with `if __name__ == "__main__":`.
    """
    start = time.perf_counter()
    out = cfg.output
    files = {src.name: sources.resolve_files(src) for src in cfg.sources}  # missing paths fail here, before work
    finished = _prepare_output(cfg, overwrite)
    if finished is not None:
        log(f"{out} is up to date (same config); pass --overwrite to rebuild it")
        return finished
    work = os.path.join(out, WORK_DIR)
    try:
        manifest = _run(cfg, files, work, log)
    finally:
        shutil.rmtree(os.path.join(work, "spool"), ignore_errors=True)
    manifest["elapsed_seconds"] = round(time.perf_counter() - start, 2)
    atomic_write_json(os.path.join(out, format.MANIFEST), manifest, sort_keys=False)
    shutil.rmtree(work)  # after the manifest: a run killed in between still has its stage work
    return manifest


def _run(cfg: Config, files: dict[str, list[str]], work: str, log: Callable[[str], None]) -> dict[str, Any]:
    out, tok = cfg.output, cfg.tokenizer

    # the document stages, as file-sharded tasks on the configured executor
    t = time.perf_counter()
    stage_dir = os.path.join(work, "stages")
    result = tasks.run(cfg, files, stage_dir, log)
    read = result.read
    log(f"read {read.docs_out:,} documents ({read.bytes_out / 1e6:.2f} MB) from {len(cfg.sources)} source(s) and ran "
        f"{len(cfg.stages)} stage(s) as {tasks.task_count(cfg)} task(s) on the {cfg.executor.kind} executor "
        f"in {time.perf_counter() - t:.1f} s")
    for line in _warnings(read):
        log(f"warning: {line}")
    _check_sources(cfg, read)
    for s in result.stats:
        log(f"  {s.stage:<20} {s.docs_in:>10,} -> {s.docs_out:>10,} documents, "
            f"{s.bytes_in / 1e6:,.2f} -> {s.bytes_out / 1e6:,.2f} MB")

    # pass 1: split, spool every document by (split, source); sample the train split for the tokenizer
    split, split_stats = SplitStage(cfg), StageStats(SplitStage.name)
    sampler = None if tok.path else tokenizer.SentenceSampler(
        tok.input_sentence_size, tok.max_sentence_length, cfg.seed, track_characters=tok.model_type == "char")
    with Spool(os.path.join(work, "spool")) as spool:
        for doc in counted(split, tasks.merged(result), split_stats):
            spool.write(doc)
            if sampler is not None and doc.meta["split"] == "train":
                sampler.add(doc.text)
    emptied = [s.name for s in cfg.sources if not any(spool.groups.get((k, s.name)) for k in format.SPLITS)]
    if emptied:
        log(f"warning: no document of source(s) {', '.join(emptied)} is left after the stages (see {REPORT})")
    if not any(spool.groups.get(("train", s.name)) for s in cfg.sources):
        raise DataPrepError("no document ended up in the train split; lower split.val_fraction, "
                            "loosen the stages' thresholds or add data (see the counts above)")

    # tokenizer (an instruction dataset's needs the chat template's special tokens as pieces)
    t = time.perf_counter()
    model_path = os.path.join(out, format.TOKENIZER)
    specials = chat_special_tokens(cfg)
    if tok.path:
        training = tokenizer.install_existing(tok, model_path)
        if specials:  # appended after the existing pieces: old ids unchanged
            training["added_pieces"] = tokenizer.add_pieces(model_path, specials)
    else:
        trained_cfg = dataclasses.replace(tok, user_defined_symbols=list(tok.user_defined_symbols) +
                                          [p for p in specials if p not in tok.user_defined_symbols])
        training = tokenizer.train(trained_cfg, sampler, model_path, os.path.join(out, "tokenizer.log"), cfg.seed)
    tok_info = tokenizer.describe(model_path)
    chat = write_chat_template(cfg, model_path) if cfg.instruct() else None
    loaded = training.get("trainer_log", {}).get("sentences_loaded")
    if loaded is not None and loaded != training["sentences_sampled"]:
        log(f"warning: SentencePiece trained on {loaded:,} of the {training['sentences_sampled']:,} sentences given "
            f"(see {out}/tokenizer.log); the dataset itself is complete")
    log(f"tokenizer: {tok_info['model_type']}, {tok_info['vocab_size']:,} pieces "
        f"({'installed' if tok.path else 'trained'} in {time.perf_counter() - t:.1f} s)")

    # pass 2: encode in parallel and write the shards
    t = time.perf_counter()
    encoded = _encode_and_write(cfg, spool, model_path, tok_info, log, chat)
    log(f"encoded {encoded.stats.docs_out:,} documents into {encoded.stats.counters.get('tokens', 0):,} tokens "
        f"on {encoded.workers} process(es) in {time.perf_counter() - t:.1f} s")

    # what happened to every document, for people (report.md) and for audits (every removal)
    stats = [*result.all_stats, split_stats, encoded.stats]
    removed = tasks.write_removal_log(stage_dir, os.path.join(out, REMOVED))
    write_report(os.path.join(out, REPORT), stats, result.reports, title=f"data_prep report: {out}")
    log(f"report: {os.path.join(out, REPORT)}; {removed:,} removal(s) listed in {os.path.join(out, REMOVED)}")
    manifest = build_manifest(cfg, files, tok_info, training, encoded, stats, result.reports)
    if chat is not None:
        manifest["record_kind"] = "pair" if cfg.pairs() else "tokens_mask"
        manifest["chat"] = {"template": chat_lib.TEMPLATE_FILE, "sha256": sha256_file(os.path.join(out, chat_lib.TEMPLATE_FILE)),
                            "special_tokens": list(chat.template.special_tokens), "end_of_turn": chat.template.end_of_turn,
                            "bos_token": chat.template.bos_token, "eos_token": chat.template.eos_token,
                            "max_tokens": chat.max_tokens, "truncation": TRUNCATION["pair" if cfg.pairs() else "example"],
                            **encoded.chat}
    return manifest


def chat_special_tokens(cfg: Config) -> list[str]:
    """The special tokens an instruction dataset's tokenizer must have as pieces ([] otherwise)."""
    if not cfg.instruct():
        return []
    if cfg.chat.special_tokens is not None:
        return list(cfg.chat.special_tokens)
    return [] if cfg.chat.template is not None else list(chat_lib.SPECIAL_TOKENS)


def write_chat_template(cfg: Config, model_path: str) -> shards.ChatEncoding:
    """Writes chat_template.jinja beside the tokenizer; checks its tokens are single pieces."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    piece = lambda i: sp.id_to_piece(i) if i >= 0 else ""  # noqa: E731
    template = chat_lib.load_template(cfg.chat.template, chat_special_tokens(cfg), end_of_turn=cfg.chat.end_of_turn,
                                      bos_token=piece(sp.bos_id()), eos_token=piece(sp.eos_id()))
    for token in {*template.special_tokens, template.end_of_turn}:
        if sp.piece_to_id(token) == sp.unk_id():
            raise DataPrepError(f"chat token {token!r} is not a piece of the tokenizer; list it in chat.special_tokens")
    with open(os.path.join(cfg.output, chat_lib.TEMPLATE_FILE), "w", encoding="utf-8") as f:
        f.write(template.source)
    return shards.ChatEncoding(template, cfg.chat.max_tokens)


def _warnings(stats: StageStats) -> list[str]:
    """Bad input the readers skipped or repaired, with the first places it was found."""
    lines = [f"{reason}: skipped {n:,} (e.g. {', '.join(stats.examples.get(reason, [])[:3])})"
             for reason, n in sorted(stats.removed.items())]
    for key, n in sorted(stats.counters.items()):
        if key.startswith("repaired:"):
            reason = f"{stats.stage}:{key}"
            lines.append(f"{reason}: {n:,} (e.g. {', '.join(stats.examples.get(reason, [])[:3])})")
    return lines


def _check_sources(cfg: Config, read: StageStats) -> None:
    for src in cfg.sources:
        if not read.counters.get(f"documents:{src.name}"):
            why = "; ".join(_warnings(read)) or "its files hold no text"
            raise SourceError(f"source {src.name!r} produced no documents ({why}); check its paths and text_field")


class Spool:
    """Documents on disk as JSONL, one file per (split, source), with their counts."""

    def __init__(self, work_dir: str):
        self.dir = work_dir
        os.makedirs(work_dir, exist_ok=True)
        self.groups: dict[tuple[str, str], dict[str, int]] = {}  # (split, source) -> documents, bytes
        self._files: dict[tuple[str, str], Any] = {}

    def _path(self, key: tuple[str, str]) -> str:
        return os.path.join(self.dir, f"{key[0]}-{key[1]}.jsonl")

    def write(self, doc: Document) -> None:
        key = (doc.meta["split"], doc.source)
        if key not in self._files:
            self._files[key] = open(self._path(key), "w", encoding="utf-8")
            self.groups[key] = {"documents": 0, "bytes": 0}
        payload = doc.meta.get("messages", doc.meta.get("pair"))  # an instruction example's or a pair's structure
        row = [doc.id, doc.text] + ([payload] if payload is not None else [])
        self._files[key].write(json.dumps(row) + "\n")  # ASCII-safe even for odd ids
        self.groups[key]["documents"] += 1
        self.groups[key]["bytes"] += len(doc.text.encode("utf-8"))

    def read(self, split: str, source: str) -> Iterator[tuple[str, str, list[dict] | None]]:
        """(id, text, messages of an instruction example / a pair's {prompt, chosen, rejected} / None) per document."""
        with open(self._path((split, source)), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                yield row[0], row[1], (row[2] if len(row) > 2 else None)

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():
            f.close()


class EncodeStats:
    """Counts of the encode pass per source and split, plus the round-trip check of the first records."""

    def __init__(self, cfg: Config, sp: spm.SentencePieceProcessor, dtype: np.dtype, workers: int):
        self.sp, self.dtype, self.workers = sp, dtype, workers
        self.masked = cfg.instruct()  # records carry a loss mask: one byte per token after the ids
        self.check_limit = cfg.tokenizer.roundtrip_check_documents
        self.text_start = int(cfg.tokenizer.add_bos)  # records are [BOS] + text tokens + EOS
        self.stats = StageStats("encode", counters={"tokens": 0, "empty_documents": 0})
        self.per_source = {s.name: {"documents": 0, "bytes": 0, "tokens": 0, "unk_tokens": 0,
                                    "splits": {k: {"documents": 0, "tokens": 0} for k in format.SPLITS}}
                           for s in cfg.sources}
        self.splits = {k: {"documents": 0, "tokens": 0, "shards": []} for k in format.SPLITS}
        self.checks = {k: {"documents_checked": 0, "mismatched": 0, "examples": []} for k in format.SPLITS}
        # instruction datasets: what the max_tokens cut did, and how many tokens are trained
        self.chat = {"examples_truncated": 0, "examples_dropped": 0, "tokens_cut": 0, "trained_tokens": 0}

    def add(self, split: str, source: str, doc_id: str, text: str, record: bytes | None, unk: int, info: dict) -> None:
        stats = self.stats
        if info:
            self.chat["examples_truncated"] += info["truncated"]
            self.chat["tokens_cut"] += info["tokens"] - (info["kept"] if record is not None else 0)
            self.chat["trained_tokens"] += info["trained"]
        if record is None:  # an example cut to max_tokens before its first response token
            self.chat["examples_dropped"] += 1
            stats.docs_in += 1
            stats.bytes_in += len(text.encode("utf-8"))
            stats.remove(Document(text, doc_id, source), "no_trained_token_within_max_tokens")
            return
        tokens = info.get("kept", len(record) // (self.dtype.itemsize + int(self.masked)))
        nbytes = len(text.encode("utf-8"))
        src = self.per_source[source]
        for counts in (src, src["splits"][split], self.splits[split]):
            counts["documents"] += 1
            counts["tokens"] += tokens
        src["bytes"] += nbytes
        src["unk_tokens"] += unk
        stats.docs_in += 1
        stats.docs_out += 1
        stats.bytes_in += nbytes
        stats.bytes_out += nbytes
        stats.count("tokens", tokens)
        stats.count("empty_documents", int(not text))
        if unk:
            stats.repair("characters_encoded_as_unk", doc_id, unk)
        check = self.checks[split]
        if check["documents_checked"] < self.check_limit and not info.get("truncated"):
            check["documents_checked"] += 1
            if info.get("roundtrip") is not None:  # a conversation: its ids decode to the template's text
                same = info["roundtrip"]
            else:
                ids = format.decode_record(record, self.dtype, "tokens_mask" if self.masked else "tokens")
                ids = ids["token"] if self.masked else ids
                same = self.sp.decode(ids[self.text_start : -1].tolist()) == text
            if not same:
                check["mismatched"] += 1
                if len(check["examples"]) < 10:
                    check["examples"].append(doc_id)

    def warnings(self) -> list[str]:
        lines = []
        unk = self.stats.counters.get("repaired:characters_encoded_as_unk")
        if unk:
            examples = self.stats.examples["encode:repaired:characters_encoded_as_unk"]
            lines.append(f"{unk:,} character(s) encoded as <unk> (e.g. in {', '.join(examples[:3])}); "
                         "set tokenizer.byte_fallback=true to keep them")
        for split, check in self.checks.items():
            if check["mismatched"]:
                lines.append(f"{check['mismatched']} of the first {check['documents_checked']} {split} documents do not "
                             f"decode back to their text (e.g. {check['examples'][0]}): the tokenizer changes text")
        lines += [f"the {split} split is empty" for split, counts in self.splits.items() if not counts["documents"]]
        return lines


def _encode_and_write(cfg: Config, spool: Spool, model_path: str, tok_info: dict, log,
                      chat: shards.ChatEncoding | None = None) -> EncodeStats:
    with open(model_path, "rb") as f:
        model_proto = f.read()
    dtype = format.token_dtype(tok_info["vocab_size"])
    workers = cfg.workers or cores()
    encoded = EncodeStats(cfg, spm.SentencePieceProcessor(model_proto=model_proto), dtype, workers)
    order = [s.name for s in cfg.sources]
    plan = shards.plan_shards(spool.groups, order, cfg.shards.target_mb)
    written = shards.write_shards(plan, spool.read, cfg.output, dtype, model_proto, cfg.tokenizer.add_bos, workers,
                                  encoded.add, chat)
    for split, entries in written.items():
        encoded.splits[split]["shards"] = entries
    for line in encoded.warnings():
        log(f"warning: {line}")
    return encoded


def _same_dataset(a: dict | None, b: dict) -> bool:
    """Whether two configs make the same bytes: they may differ only in how the work is run."""
    return a is not None and all(a.get(k) == b.get(k) for k in set(a) | set(b) if k not in EXECUTION_KEYS)


def _prepare_output(cfg: Config, overwrite: bool) -> dict[str, Any] | None:
    """Makes the output folder ready; returns the existing manifest when it already holds this dataset.

    Stage work of an unfinished run (`.work/stages`) is kept for `tasks.run` to resume, unless
    `overwrite` asks for a fresh start.
    """
    out = cfg.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataPrepError(f"output {out!r} is a file; choose a folder, e.g. output=data/my_dataset")
    manifest_path = os.path.join(out, format.MANIFEST)
    work = os.path.join(out, WORK_DIR)
    if os.path.isfile(manifest_path):
        if not overwrite:
            try:
                with open(manifest_path, encoding="utf-8") as f:
                    existing = json.load(f)
            except (OSError, ValueError):
                existing = {}
            if _same_dataset(existing.get("config"), cfg.to_dict()):
                shutil.rmtree(work, ignore_errors=True)  # left by a run killed just after its manifest
                return existing
            raise DataPrepError(f"{out!r} already holds a dataset prepared with another config; "
                                "pass --overwrite to replace it, or choose another output=")
        os.remove(manifest_path)  # first: from here on the folder is unfinished
    shard_dir = os.path.join(out, format.SHARD_DIR)
    if os.path.isdir(shard_dir):
        for name in os.listdir(shard_dir):
            if name.endswith(".array_record"):
                os.remove(os.path.join(shard_dir, name))
    for name in (format.TOKENIZER, chat_lib.TEMPLATE_FILE, "tokenizer.log", REPORT, REMOVED):
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    if overwrite:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(shard_dir, exist_ok=True)
    return None
