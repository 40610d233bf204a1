"""Readers: each source type turns files into `Document`s, counting every skip and repair.

One module per format (txt, jsonl, parquet, warc, hf); `common` opens files (gzip, zstd), sniffs
binaries and repairs text for all of them. Bad input is never lost silently:
- a missing path or a glob that matches nothing raises SourceError naming it (before any work);
- an empty file is skipped and counted ("empty_file");
- files may be compressed: gzip (name ending in .gz) or zstd (.zst), both read as streams;
- bytes that are not UTF-8 are replaced with U+FFFD and counted per file ("invalid_utf8");
- a binary file (a NUL byte in its first 8 kB, as git decides) is skipped and counted;
- a malformed JSON line, or one without the text field, is skipped and counted with file:line;
- a corrupt file (truncated or damaged .gz/.zst or WARC, not parquet) keeps what was read before
  the damage and is counted with the line (WARC: record offset) where reading stopped;
- a WARC record that is no page (not HTTP 200, not HTML) is skipped and counted with its offset.
Every count lands in the "read" StageStats, so the manifest and report.md show it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

from data_prep import corpus, instruct, preference
from data_prep.config import FILE_SOURCE_TYPES, INSTRUCT_SOURCE_TYPES, PAIR_SOURCE_TYPES, SourceConfig
from data_prep.document import Document
from data_prep.errors import SourceError
from data_prep.sources.common import decode_utf8, open_binary, require, valid_text
from data_prep.sources.hf import hf_shards, read_hf
from data_prep.sources.jsonl import read_jsonl
from data_prep.sources.parquet import read_parquet
from data_prep.sources.txt import read_txt
from data_prep.sources.warc import read_warc
from data_prep.stats import StageStats

__all__ = ["decode_utf8", "file_names", "open_binary", "read_file", "read_source", "resolve_files"]

# source type -> reader(src, path, where, stats) of one file (a shard for hf)
READERS = {"txt": read_txt, "html": read_txt, "jsonl": read_jsonl, "parquet": read_parquet,
           "warc": read_warc, "hf": read_hf}


def resolve_files(src: SourceConfig) -> list[str]:
    """The files a source will read, in a fixed order; raises SourceError for any path that is missing.

    pydoc_topics lists its topic names, so tasks divide topics as they divide files.
    """
    if src.type == "pydoc_topics":
        return [name for name, _ in corpus.pydoc_topics()]
    if src.type in ("python_stdlib", "python_instruct"):
        return corpus.stdlib_files(src.max_files, src.max_bytes)
    if src.type == "hf":
        return hf_shards(src)
    files: list[str] = []
    for pattern in src.paths:
        if any(c in pattern for c in "*?["):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise SourceError(f"source {src.name!r}: no file matches {pattern!r} (relative to {os.getcwd()})")
            files.extend(matches)
        elif os.path.isdir(pattern):
            raise SourceError(f"source {src.name!r}: {pattern!r} is a folder; give files or a glob such as {pattern.rstrip('/')}/*.{src.type}")
        elif not os.path.isfile(pattern):
            raise SourceError(f"source {src.name!r}: file {pattern!r} does not exist (relative to {os.getcwd()}); fix sources.{src.name}.paths")
        else:
            files.append(pattern)
    if src.type == "warc":
        require("warcio", f"source {src.name!r} is warc")
    if any(f.endswith(".zst") for f in files):
        require("zstandard", f"source {src.name!r} has .zst files")
    return list(dict.fromkeys(files))  # a file named twice is read once


def file_names(src: SourceConfig, files: list[str]) -> list[str]:
    """The name each of `files` has in document ids: relative to the source's common folder, so
    ids stay short and do not depend on how files are divided into tasks."""
    if src.type in FILE_SOURCE_TYPES:
        return _short_names(files)
    return list(files)  # pydoc topic names, standard-library paths: already short


def read_source(src: SourceConfig, files: list[str], stats: StageStats) -> Iterator[Document]:
    """Every document of `files` (as `resolve_files` lists them), in order."""
    for path, name in zip(files, file_names(src, files)):
        yield from read_file(src, path, name, stats)


def read_file(src: SourceConfig, path: str, name: str, stats: StageStats) -> Iterator[Document]:
    """The documents of one file (a topic for pydoc_topics); `name` is how ids and reports call it."""
    where = f"{src.name}/{name}"
    if src.type in INSTRUCT_SOURCE_TYPES:
        yield from instruct.read_examples(src, path, where, stats)
    elif src.type in PAIR_SOURCE_TYPES:
        yield from preference.read_pairs(src, path, where, stats)
    elif src.type == "pydoc_topics":
        yield Document(valid_text(corpus.pydoc_topic(path), where, stats), f"{src.name}/topics:{name}", src.name)
    elif src.type == "python_stdlib":
        yield from read_txt(src, os.path.join(corpus.stdlib_dir(), path), where, stats)
    else:
        yield from READERS[src.type](src, path, where, stats)


def _short_names(files: list[str]) -> list[str]:
    if len(files) == 1:
        return [os.path.basename(files[0])]
    base = os.path.commonpath([os.path.abspath(f) for f in files])
    return [os.path.relpath(os.path.abspath(f), base) for f in files]
