"""JSON lines: one document per line, its text under `text_field`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from data_prep.config import SourceConfig
from data_prep.document import Document
from data_prep.sources.common import DAMAGED_FILE_ERRORS, decode_utf8, field_text, head, is_binary, open_binary
from data_prep.stats import StageStats


def read_jsonl(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    if os.path.getsize(path) == 0:
        stats.skip("empty_file", where)
        return
    replaced = 0
    number = 0
    try:
        if is_binary(head(path)):  # JSON never holds a raw NUL byte
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
    return field_text(record.get(field) if isinstance(record, dict) else None, where, stats)
