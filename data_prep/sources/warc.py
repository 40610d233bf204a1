"""WARC web archives: every HTML page (a 200 response or an HTML resource record) is a document of
raw HTML, decoded in the charset its headers or <meta> declare; an html_extract stage cleans it."""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

from data_prep.config import SourceConfig
from data_prep.document import Document
from data_prep.sources.common import DAMAGED_FILE_ERRORS, decode_utf8, head, open_binary
from data_prep.stats import StageStats

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


def read_warc(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    """The HTML pages of a WARC file (.warc, or .warc.gz compressed per record or as a whole).

    A page is a `response` record with HTTP status 200 and an HTML content type, or an HTML
    `resource` record; its raw HTML becomes a document (the html_extract stage cleans it) with
    meta["url"]. Ids and places are `file:offset`, the record's offset in the uncompressed WARC.
    Every record is counted by type ("warc_records:<type>"). A file that ends inside a record, or
    whose record headers or compression are broken, keeps the pages before the damage.
    """
    from warcio.archiveiterator import WARCIterator  # optional: resolve_files checks for it first

    if os.path.getsize(path) == 0:
        stats.skip("empty_file", where)
        return
    try:
        if not head(path, 5).startswith(b"WARC/"):
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
