"""What every reader shares: opening (possibly compressed) files, sniffing binaries, and turning
bytes and field values into valid text, counting every repair and skip."""

from __future__ import annotations

import gzip
import io
import re
import zlib
from typing import BinaryIO

from data_prep.errors import SourceError
from data_prep.sources.zstd import ZstdReader
from data_prep.stats import StageStats

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what 'surrogateescape' makes of an invalid byte
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
BINARY_SNIFF_BYTES = 8000
DAMAGED_FILE_ERRORS = (OSError, EOFError, zlib.error)  # what a truncated or corrupt .gz / .zst raises


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decodes UTF-8, replacing every invalid byte with U+FFFD; returns (text, bytes replaced)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        return _ESCAPED_BYTE.subn("\ufffd", data.decode("utf-8", "surrogateescape"))


def valid_text(text: str, where: str, stats: StageStats) -> str:
    """JSON and Parquet can carry lone surrogates, which no tokenizer or UTF-8 file can hold."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        text, n = _LONE_SURROGATE.subn("\ufffd", text)
        stats.repair("lone_surrogate", where, n)
        return text


def field_text(value, where: str, stats: StageStats) -> str | None:
    """A record's text field, or None (counted) when it is missing or not a string."""
    if value is None:
        stats.skip("missing_text_field", where)
        return None
    if not isinstance(value, str):
        stats.skip("text_field_not_a_string", where)
        return None
    return valid_text(value, where, stats)


def text_value(value, at: str, stats: StageStats) -> str | None:
    """A column's value as document text, or None (counted) when it is missing or no string."""
    if isinstance(value, bytes):  # a binary column: decode like a file
        value, bad = decode_utf8(value)
        if bad:
            stats.repair("invalid_utf8", at, bad)
    return field_text(value, at, stats)


def is_binary(head: bytes) -> bool:
    return b"\x00" in head[:BINARY_SNIFF_BYTES]


def require(module: str, what: str) -> None:
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
        return io.BufferedReader(ZstdReader(path), buffer_size=1 << 16)
    return open(path, "rb")


def head(path: str, size: int = BINARY_SNIFF_BYTES) -> bytes:
    with open_binary(path) as f:
        return f.read(size)


def read_text_file(path: str, where: str, stats: StageStats) -> str | None:
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
    if is_binary(data):
        stats.skip("binary_file", where)
        return None
    text, replaced = decode_utf8(data)
    if replaced:
        stats.repair("invalid_utf8", where, replaced)
    return text
