"""Readers: each source type turns files into `Document`s, counting every skip and repair.

Bad input is never lost silently:
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

import codecs
import glob
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from data_prep import corpus, instruct
from data_prep.config import FILE_SOURCE_TYPES, INSTRUCT_SOURCE_TYPES, SourceConfig
from data_prep.document import Document
from data_prep.errors import SourceError
from data_prep.stats import StageStats

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what 'surrogateescape' makes of an invalid byte
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")
BINARY_SNIFF_BYTES = 8000
DAMAGED_FILE_ERRORS = (OSError, EOFError, zlib.error)  # what a truncated or corrupt .gz / .zst raises


def resolve_files(src: SourceConfig) -> list[str]:
    """The files a source will read, in a fixed order; raises SourceError for any path that is missing.

    pydoc_topics lists its topic names, so tasks divide topics as they divide files.
    """
    if src.type == "pydoc_topics":
        return [name for name, _ in corpus.pydoc_topics()]
    if src.type in ("python_stdlib", "python_instruct"):
        return corpus.stdlib_files(src.max_files, src.max_bytes)
    if src.type == "hf":
        return _hf_shards(src)
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
        _require("warcio", f"source {src.name!r} is warc")
    if any(f.endswith(".zst") for f in files):
        _require("zstandard", f"source {src.name!r} has .zst files")
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
    elif src.type == "pydoc_topics":
        yield Document(_valid_text(corpus.pydoc_topic(path), where, stats), f"{src.name}/topics:{name}", src.name)
    elif src.type == "python_stdlib":
        yield from _read_txt(src, os.path.join(corpus.stdlib_dir(), path), where, stats)
    else:
        reader = {"txt": _read_txt, "html": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet,
                  "warc": _read_warc, "hf": _read_hf}[src.type]
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


def _field_text(value, where: str, stats: StageStats) -> str | None:
    """A record's text field, or None (counted) when it is missing or not a string."""
    if value is None:
        stats.skip("missing_text_field", where)
        return None
    if not isinstance(value, str):
        stats.skip("text_field_not_a_string", where)
        return None
    return _valid_text(value, where, stats)


def _short_names(files: list[str]) -> list[str]:
    if len(files) == 1:
        return [os.path.basename(files[0])]
    base = os.path.commonpath([os.path.abspath(f) for f in files])
    return [os.path.relpath(os.path.abspath(f), base) for f in files]


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head[:BINARY_SNIFF_BYTES]


def _require(module: str, what: str) -> None:
    """Fails before any work when an optional reader's package is missing."""
    try:
        __import__(module)
    except ImportError:
        raise SourceError(f"{what} but the {module} package is not installed; pip install {module}") from None


def open_binary(path: str) -> BinaryIO:
    """A file's bytes as a stream, decompressed when its name ends in .gz or .zst."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 16)
    return open(path, "rb")


def _head(path: str, size: int = BINARY_SNIFF_BYTES) -> bytes:
    with open_binary(path) as f:
        return f.read(size)


class _ZstdReader(io.RawIOBase):
    """A .zst file decompressed frame after frame, 16 kB of it at a time.

    zstandard's own stream reader ends quietly when a file stops inside a frame; this one raises
    EOFError there (and OSError for corrupt data, after handing over what came before), so a
    damaged .zst is counted like a damaged .gz.
    """

    CHUNK = 1 << 14

    def __init__(self, path: str):
        import zstandard

        self._new_frame = zstandard.ZstdDecompressor().decompressobj
        self._zstd_error = zstandard.ZstdError
        self._frame = self._new_frame()
        self._in_frame = False  # some bytes of the current frame were read, its end not yet
        self._out = memoryview(b"")
        self._error: OSError | None = None  # raised once the output before it has been read
        self._file = open(path, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            if self._error is not None:
                raise self._error
            data = self._file.read(self.CHUNK)
            if not data:
                if self._in_frame:
                    raise EOFError("the .zst file ends inside a frame")
                return 0
            self._out = memoryview(self._decompress(data))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            try:
                out.append(self._frame.decompress(data))
            except self._zstd_error as e:
                self._error = OSError(f"corrupt zstd data: {e}")
                break
            self._in_frame = not self._frame.eof
            data = b""
            if self._frame.eof:  # the next frame may start in the same chunk
                data, self._frame = self._frame.unused_data, self._new_frame()
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


def _read_text_file(path: str, where: str, stats: StageStats) -> str | None:
    """A whole file's text (decompressed when its name ends in .gz or .zst), or None when it is skipped."""
    try:
        with open_binary(path) as f:
            data = f.read()
    except DAMAGED_FILE_ERRORS:
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


def _read_jsonl(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    if os.path.getsize(path) == 0:
        stats.skip("empty_file", where)
        return
    replaced = 0
    number = 0
    try:
        if _is_binary(_head(path)):  # JSON never holds a raw NUL byte
            stats.skip("binary_file", where)
            return
        with open_binary(path) as f:
            for number, raw in enumerate(f, start=1):
                line, bad = decode_utf8(raw)
                replaced += bad
                text = _parse_json_line(line, f"{where}:{number}", src.text_field, stats)
                if text is not None:
                    yield Document(text, f"{where}:{number}", src.name)
    except DAMAGED_FILE_ERRORS:  # truncated or corrupt .gz/.zst: keep what came before, say where it broke
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
    return _field_text(record.get(field) if isinstance(record, dict) else None, where, stats)


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
            text = _text_value(value, at, stats)
            if text is not None:
                yield Document(text, at, src.name)
            row += 1


def _text_value(value, at: str, stats: StageStats) -> str | None:
    """A column's value as document text, or None (counted) when it is missing or no string."""
    if isinstance(value, bytes):  # a binary column: decode like a file
        value, bad = decode_utf8(value)
        if bad:
            stats.repair("invalid_utf8", at, bad)
    return _field_text(value, at, stats)


# --- WARC: web archives -------------------------------------------------------------------------

_PAGE_RECORDS = ("response", "resource")  # records that can hold a page; request, metadata, ... cannot
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_CHARSET = re.compile(rb"""charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_CHARSET_SNIFF_BYTES = 2048  # where a <meta charset> must appear (browsers look at the first 1024)


class _FileDamaged(Exception):
    """The WARC file itself broke (truncated or corrupt compression), not just one record's payload."""


class _GuardedFile:
    """The file warcio reads, with its read errors marked as _FileDamaged.

    read1: a damaged .gz or .zst still hands over every byte before the damage (a full read()
    would drop the block it was filling).
    """

    def __init__(self, f: BinaryIO):
        self._f = f

    def read(self, size: int = -1) -> bytes:
        try:
            return self._f.read1(size)
        except DAMAGED_FILE_ERRORS as e:
            raise _FileDamaged(str(e)) from e

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:  # the caller's `with` closes the real file
        pass


def _read_warc(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    """The HTML pages of a WARC file (.warc, or .warc.gz compressed per record or as a whole).

    A page is a `response` record with HTTP status 200 and an HTML content type, or an HTML
    `resource` record; its raw HTML becomes a document (the html_extract stage cleans it) with
    meta["url"]. Ids and places are `file:offset`, the record's offset in the uncompressed WARC.
    Every record is counted by type ("warc_records:<type>"). A file that ends inside a record, or
    whose record headers or compression are broken, keeps the pages before the damage.
    """
    from warcio.archiveiterator import WARCIterator

    if os.path.getsize(path) == 0:
        stats.skip("empty_file", where)
        return
    try:
        if not _head(path, 5).startswith(b"WARC/"):
            stats.skip("not_warc", where)
            return
    except DAMAGED_FILE_ERRORS:
        stats.skip("corrupt_file", f"{where}:0")
        return
    with open_binary(path) as f:
        records = WARCIterator(_GuardedFile(f))
        while True:
            try:
                record = next(records, None)
            except Exception:  # warcio raises many kinds for broken headers, the file's for broken compression
                stats.skip("corrupt_file", f"{where}:{records.offset}")
                return
            if record is None:  # warcio also ends quietly inside a truncated header: check it read all
                if records.offset < f.tell():
                    stats.skip("corrupt_file", f"{where}:{records.offset}")
                return
            at = f"{where}:{records.offset}"
            stats.count(f"warc_records:{record.rec_type}")
            try:
                rule, html = _warc_page(record) if record.rec_type in _PAGE_RECORDS else (None, None)
                complete = _read_rest(record)
            except _FileDamaged:
                complete = False
            if not complete:
                stats.skip("corrupt_file", at)
                return
            if rule:
                stats.skip(rule, at)
            elif html is not None:
                text = _decode_html(html, _content_type(record), at, stats)
                yield Document(text, at, src.name, {"url": record.rec_headers.get_header("WARC-Target-URI")})


def _content_type(record) -> str:
    headers = record.http_headers or record.rec_headers  # a resource record has no HTTP headers
    return headers.get_header("Content-Type") or ""


def _warc_page(record) -> tuple[str | None, bytes | None]:
    """(None, the HTML payload) of a page, or (the skip rule, None); reads only a page's payload."""
    if record.http_headers is not None and record.http_headers.get_statuscode() != "200":
        return "http_status", None
    if _content_type(record).split(";")[0].strip().lower() not in _HTML_TYPES:
        return "not_html", None
    try:
        payload = record.content_stream()  # chunked and gzip/deflate/br bodies are decoded
        html = payload.read()
    except _FileDamaged:
        raise
    except Exception:  # warcio decodes leniently; should it raise all the same, only this record is lost
        return "corrupt_record", None
    decoder = getattr(payload, "decompressor", None)
    if decoder is not None and not getattr(decoder, "eof", True):  # warcio stops quietly in a broken gzip body
        return "corrupt_record", None
    return None, html


def _read_rest(record) -> bool:
    """Reads the record to its end; False when the file ends first or no Content-Length says where
    that is."""
    from warcio.limitreader import LimitReader

    stream = record.raw_stream
    length = record.rec_headers.get_header("Content-Length") or ""
    if not length.strip().isdigit() or not isinstance(stream, LimitReader):  # warcio reads a bad one as 0
        return False
    while stream.read(1 << 16):
        pass
    return stream.limit == 0


def _decode_html(body: bytes, content_type: str, where: str, stats: StageStats) -> str:
    """A page's text in the charset its HTTP header, else a <meta> tag, declares (UTF-8 when none
    or unknown). Undecodable bytes become U+FFFD and are counted."""
    declared = _CHARSET.search(content_type.encode("latin-1", "replace"))
    from_meta = declared is None
    if from_meta:
        declared = _CHARSET.search(body[:_CHARSET_SNIFF_BYTES])
    codec = _html_codec(declared.group(1).decode("ascii"), from_meta) if declared else "utf-8"
    if codec != "utf-8":
        try:
            text = body.decode(codec, "replace")
            bad = text.count("\ufffd")
            if bad:
                stats.repair("undecodable_bytes", where, bad)
            return text
        except LookupError:  # a codec that is not a text encoding (base64, rot13): read as UTF-8
            pass
    text, bad = decode_utf8(body)
    if bad:
        stats.repair("invalid_utf8", where, bad)
    return text


def _html_codec(label: str, from_meta: bool) -> str:
    """Python's codec for an HTML charset label, as browsers read them (the WHATWG encoding standard)."""
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return "utf-8"
    if name in ("ascii", "iso8859-1"):  # browsers read both as windows-1252
        return "cp1252"
    if from_meta and name.startswith(("utf-16", "utf-32")):  # a <meta> readable as ASCII is not UTF-16
        return "utf-8"
    return name


# --- Hugging Face datasets ----------------------------------------------------------------------

_HF_SHARD = re.compile(r".*-(\d+)-of-(\d+)")


def _load_hf(src: SourceConfig):
    """The source's split as an IterableDataset; SourceError when datasets or the dataset is missing."""
    try:
        import datasets
    except ImportError:
        raise SourceError(f"source {src.name!r} is hf but the datasets package is not installed; "
                          'pip install "jaxlm[hf]"') from None
    try:
        ds = datasets.load_dataset(src.dataset, src.dataset_config, split=src.dataset_split,
                                   data_files=src.paths or None, streaming=src.streaming)
    except Exception as e:  # no network, an unknown name, config or split, missing data files, ...
        raise SourceError(f"source {src.name!r}: cannot load the Hugging Face dataset {src.dataset!r} "
                          f"(config {src.dataset_config!r}, split {src.dataset_split!r}): {type(e).__name__}: {e}. "
                          "A Hub dataset needs the network, or HF_HUB_OFFLINE=1 and a copy in the HF cache") from None
    if not src.streaming:  # prepared in the HF cache: read it as a stream too, a shard per cache file
        ds = ds.to_iterable_dataset(num_shards=max(1, len(ds.cache_files)))
    if ds.features is not None and src.text_field not in ds.features:
        raise SourceError(f"source {src.name!r}: the dataset has no column {src.text_field!r}; its columns are "
                          f"{', '.join(ds.features)}; set sources.{src.name}.text_field")
    return ds


def _hf_shards(src: SourceConfig) -> list[str]:
    """The dataset's shards (its data files, when streamed) named like files, so tasks divide them."""
    count = _load_hf(src).n_shards
    return [f"{src.dataset_split}-{index:05d}-of-{count:05d}" for index in range(count)]


def _read_hf(src: SourceConfig, shard: str, where: str, stats: StageStats) -> Iterator[Document]:
    index, count = map(int, _HF_SHARD.fullmatch(shard).groups())
    ds = _load_hf(src)
    if ds.n_shards != count:
        raise SourceError(f"source {src.name!r}: the dataset changed while it was read "
                          f"({ds.n_shards} shards, {count} before); run again")
    row = 0
    try:
        for example in ds.shard(num_shards=count, index=index):
            at = f"{where}:{row}"
            text = _text_value(example.get(src.text_field), at, stats)
            if text is not None:
                yield Document(text, at, src.name)
            row += 1
    except Exception as e:  # a data file that breaks part-way, or the connection: keep the rows before
        stats.skip("stream_error", f"{where}:{row} ({type(e).__name__})")
