"""txt, html and standard-library files: the whole file, its paragraphs or its lines."""

from __future__ import annotations

import re
from collections.abc import Iterator

from data_prep.config import SourceConfig
from data_prep.document import Document
from data_prep.sources.common import read_text_file
from data_prep.stats import StageStats

_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def read_txt(src: SourceConfig, path: str, where: str, stats: StageStats) -> Iterator[Document]:
    text = read_text_file(path, where, stats)
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
