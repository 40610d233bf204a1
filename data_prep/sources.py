"""Readers: each source type turns files into `Document`s, counting every skip and repair.

Bad input is never lost silently:
- a missing path or a glob that matches nothing raises SourceError naming it (before any work);
- an empty file is skipped and counted ("empty_file");
- files may be gzipped (name ending in .gz);
- bytes that are not UTF-8 are replaced with U+FFFD and counted per file ("invalid_utf8");
- a binary file (a NUL byte in its first 8 kB, as git decides) is skipped and counted;
- a malformed JSON line, or one without the text field, is skipped and counted with file:line;
- a corrupt file (truncated gzip, not parquet) keeps what was read before the damage and is
  counted with the line where reading stopped.
Every count lands in the "read" StageStats, so the manifest and report.md show it.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections.abc import Iterator

from data_prep import corpus
from data_prep.config import FILE_SOURCE_TYPES, SourceConfig
from data_prep.document import Document
from data_prep.errors import SourceError
from data_prep.stats import StageStats

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what 'surrogateescape' makes of an invalid byte
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")
BINARY_SNIFF_BYTES = 8000


def resolve_files(src: SourceConfig) -> list[str]:
    """The files a source will read, in a fixed order; raises SourceError for any path that is missing.

    pydoc_topics lists its topic names, so tasks divide topics as they divide files.
    """
    if src.type == "pydoc_topics":
        return [name for name, _ in corpus.pydoc_topics()]
    if src.type == "python_stdlib":
        return corpus.stdlib_files(src.max_files, src.max_bytes)
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
    if src.type == "pydoc_topics":
        yield Document(_valid_text(corpus.pydoc_topic(path), where, stats), f"{src.name}/topics:{name}", src.name)
    elif src.type == "python_stdlib":
        yield from _read_txt(src, os.path.join(corpus.stdlib_dir(), path), where, stats)
    else:
        reader = {"txt": _read_txt, "html": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet}[src.type]
        yield from reader(src, path, where, stats)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decodes UTF-8, replacing every invalid byte with U+FFFD; returns (text, bytes replaced)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        return _ESCAPED_BYTE.subn("\ufffd", data.decode("utf-8", "surrogateescape"))


def _valid_text(text: str, where: str, stats: StageStats) -> str:
    """JSON and Parquet can carry lone surrogates, which no tokenizer or UTF-8 file can hold."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        text, n = _LONE_SURROGATE.subn("\ufffd", text)
        stats.repair("lone_surrogate", where, n)
        return text


def _short_names(files: list[str]) -> list[str]:
    if len(files) == 1:
        return [os.path.basename(files[0])]
    base = os.path.commonpath([os.path.abspath(f) for f in files])
    return [os.path.relpath(os.path.abspath(f), base) for f in files]


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head[:BINARY_SNIFF_BYTES]


def _read_text_file(path: str, where: str, stats: StageStats) -> str | None:
    """A whole file's text (gunzipped when its name ends in .gz), or None when it is skipped."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz") and data:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            stats.skip("corrupt_file", where)
            return None
    if not data:
        stats.skip("empty_file", where)
        return None
    if _is_binary(data):
        stats.skip("binary_file", where)
        return None
    text, replaced = decode_utf8(data)
    if replaced:
        stats.repair("invalid_utf8", where, replaced)
    return text


def _read_txt(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    """txt, html and standard-library files: the whole file, its paragraphs or its lines."""
    text = _read_text_file(path, where, stats)
    if text is None:
        return
    if src.doc_separator is None:
        yield Document(text, f"{where}:0", src.name)
    elif src.doc_separator == "line":
        lines = text.split("\n")
        if lines[-1] == "":  # the text ended with a newline: no line after it
            lines.pop()
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield Document(line, f"{where}:{number}", src.name)
            else:
                stats.skip("blank_line", f"{where}:{number}")
    else:  # blank_line: paragraphs, without the blank lines between them
        for index, paragraph in enumerate(p for p in _BLANK_LINES.split(text.rstrip("\n")) if p.strip()):
            yield Document(paragraph, f"{where}:{index}", src.name)


def _open_lines(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_jsonl(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    if os.path.getsize(path) == 0:
        stats.skip("empty_file", where)
        return
    replaced = 0
    number = 0
    try:
        with _open_lines(path) as f:
            if _is_binary(f.read(BINARY_SNIFF_BYTES)):  # JSON never holds a raw NUL byte
                stats.skip("binary_file", where)
                return
            f.seek(0)
            for number, raw in enumerate(f, start=1):
                line, bad = decode_utf8(raw)
                replaced += bad
                text = _parse_json_line(line, f"{where}:{number}", src.text_field, stats)
                if text is not None:
                    yield Document(text, f"{where}:{number}", src.name)
    except (OSError, EOFError):  # truncated or corrupt gzip: keep what came before, say where it broke
        stats.skip("corrupt_file", f"{where}:{number + 1}")
    if replaced:
        stats.repair("invalid_utf8", where, replaced)


def _parse_json_line(line: str, where: str, field: str, stats: StageStats) -> str | None:
    if not line.strip():
        stats.skip("blank_line", where)
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        stats.skip("malformed_json", where)
        return None
    text = record.get(field) if isinstance(record, dict) else None
    if text is None:
        stats.skip("missing_text_field", where)
        return None
    if not isinstance(text, str):
        stats.skip("text_field_not_a_string", where)
        return None
    return _valid_text(text, where, stats)


def _read_parquet(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"source {src.name!r} is parquet but pyarrow is not installed; pip install pyarrow") from None
    if os.path.getsize(path) == 0:
        stats.skip("empty_file", where)
        return
    try:
        pf = pq.ParquetFile(path)
    except Exception:  # pyarrow raises ArrowInvalid and friends for a file that is not parquet
        stats.skip("not_parquet", where)
        return
    if src.text_field not in pf.schema_arrow.names:
        stats.skip("missing_text_column", f"{where} (columns: {', '.join(pf.schema_arrow.names)})")
        return
    row = 0
    for batch in pf.iter_batches(columns=[src.text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            at = f"{where}:{row}"
            if isinstance(value, bytes):  # a binary column: decode like a file
                value, bad = decode_utf8(value)
                if bad:
                    stats.repair("invalid_utf8", at, bad)
            if value is None:
                stats.skip("missing_text_field", at)
            elif not isinstance(value, str):
                stats.skip("text_field_not_a_string", at)
            else:
                yield Document(_valid_text(value, at, stats), at, src.name)
            row += 1
