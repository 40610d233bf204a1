"""Readers: each source type turns files into `Document`s, counting every skip and repair.

Bad input is never lost silently:
- a missing path or a glob that matches nothing raises SourceError naming it (before any work);
- an empty file is skipped and counted ("empty_file");
- bytes that are not UTF-8 are replaced with U+FFFD and counted per file ("invalid_utf8");
- a malformed JSON line, or one without the text field, is skipped and counted with file:line.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections.abc import Iterator

from data_prep import corpus
from data_prep.config import SourceConfig
from data_prep.document import Document
from data_prep.errors import SourceError
from data_prep.manifest import StageReport

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what 'surrogateescape' makes of an invalid byte
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def resolve_files(src: SourceConfig) -> list[str]:
    """The files a source will read, in a fixed order; raises SourceError for any path that is missing."""
    if src.type == "pydoc_topics":
        return []
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


def read_source(src: SourceConfig, files: list[str], report: StageReport) -> Iterator[Document]:
    if src.type == "pydoc_topics":
        for topic, text in corpus.pydoc_topics():
            yield Document(_valid_text(text, f"pydoc_topics:{topic}", report), f"{src.name}/topics:{topic}", src.name)
        return
    if src.type == "python_stdlib":
        yield from _read_txt(src, [os.path.join(corpus.stdlib_dir(), f) for f in files], report, names=files)
        return
    reader = {"txt": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet}[src.type]
    yield from reader(src, files, report)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decodes UTF-8, replacing every invalid byte with U+FFFD; returns (text, bytes replaced)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        return _ESCAPED_BYTE.subn("\ufffd", data.decode("utf-8", "surrogateescape"))


def _valid_text(text: str, where: str, report: StageReport) -> str:
    """JSON and Parquet can carry lone surrogates, which no tokenizer or UTF-8 file can hold."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        text, n = _LONE_SURROGATE.subn("\ufffd", text)
        report.repair("lone_surrogate", where, n)
        return text


def _short_names(files: list[str]) -> list[str]:
    """File names for document ids: relative to the files' common folder, so ids stay short."""
    if len(files) == 1:
        return [os.path.basename(files[0])]
    base = os.path.commonpath([os.path.abspath(f) for f in files])
    return [os.path.relpath(os.path.abspath(f), base) for f in files]


def _read_bytes(path: str, name: str, report: StageReport) -> str | None:
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        report.skip("empty_file", name)
        return None
    text, replaced = decode_utf8(data)
    if replaced:
        report.repair("invalid_utf8", name, replaced)
    return text


def _read_txt(src: SourceConfig, files: list[str], report: StageReport, names: list[str] | None = None) -> Iterator[Document]:
    for path, name in zip(files, names or _short_names(files)):
        where = f"{src.name}/{name}"
        text = _read_bytes(path, where, report)
        if text is None:
            continue
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
                    report.skip("blank_line", f"{where}:{number}")
        else:  # blank_line: paragraphs, without the blank lines between them
            for index, paragraph in enumerate(p for p in _BLANK_LINES.split(text.rstrip("\n")) if p.strip()):
                yield Document(paragraph, f"{where}:{index}", src.name)


def _open_lines(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_jsonl(src: SourceConfig, files: list[str], report: StageReport) -> Iterator[Document]:
    for path, name in zip(files, _short_names(files)):
        where = f"{src.name}/{name}"
        if os.path.getsize(path) == 0:
            report.skip("empty_file", where)
            continue
        replaced = 0
        number = 0
        try:
            with _open_lines(path) as f:
                for number, raw in enumerate(f, start=1):
                    line, bad = decode_utf8(raw)
                    replaced += bad
                    doc = _parse_json_line(line, f"{where}:{number}", src.text_field, report)
                    if doc is not None:
                        yield Document(doc, f"{where}:{number}", src.name)
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise SourceError(f"source {src.name!r}: {path} is corrupt after line {number} ({e}); re-create or remove it") from None
        if replaced:
            report.repair("invalid_utf8", where, replaced)


def _parse_json_line(line: str, where: str, field: str, report: StageReport) -> str | None:
    if not line.strip():
        report.skip("blank_line", where)
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        report.skip("malformed_json", where)
        return None
    text = record.get(field) if isinstance(record, dict) else None
    if text is None:
        report.skip("missing_text_field", where)
        return None
    if not isinstance(text, str):
        report.skip("text_field_not_a_string", where)
        return None
    return _valid_text(text, where, report)


def _read_parquet(src: SourceConfig, files: list[str], report: StageReport) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"source {src.name!r} is parquet but pyarrow is not installed; pip install pyarrow") from None
    for path, name in zip(files, _short_names(files)):
        where = f"{src.name}/{name}"
        if os.path.getsize(path) == 0:
            report.skip("empty_file", where)
            continue
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid and friends for a file that is not parquet
            raise SourceError(f"source {src.name!r}: {path} is not a readable parquet file ({e})") from None
        columns = pf.schema_arrow.names
        if src.text_field not in columns:
            raise SourceError(f"source {src.name!r}: {path} has no column {src.text_field!r} (columns: {', '.join(columns)}); set sources.{src.name}.text_field")
        row = 0
        for batch in pf.iter_batches(columns=[src.text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                at = f"{where}:{row}"
                if isinstance(value, bytes):  # a binary column: decode like a file
                    value, bad = decode_utf8(value)
                    if bad:
                        report.repair("invalid_utf8", at, bad)
                if value is None:
                    report.skip("missing_text_field", at)
                elif not isinstance(value, str):
                    report.skip("text_field_not_a_string", at)
                else:
                    yield Document(_valid_text(value, at, report), at, src.name)
                row += 1
