"""Atomic file writes and the JSONL document format that stage tasks hand to each other.

A task's outputs become visible only whole (written to a temporary name, then renamed), so a
run killed at any moment leaves either the complete file or none.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from typing import Any, Iterable, Iterator

import numpy as np

from data_prep.document import Document


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=sort_keys, ensure_ascii=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def doc_to_json(doc: Document, ascii_only: bool = False) -> str:
    return json.dumps({"id": doc.id, "source": doc.source, "text": doc.text, "meta": doc.meta},
                      ensure_ascii=ascii_only)


def write_documents(path: str | os.PathLike, docs: Iterable[Document]) -> int:
    """Write `docs` as JSONL atomically; returns the number written."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in docs:
            try:
                f.write(doc_to_json(doc) + "\n")
            except UnicodeEncodeError:  # lone surrogates (undecodable input): escape them, stay valid UTF-8
                f.write(doc_to_json(doc, ascii_only=True) + "\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return count


def read_documents(path: str | os.PathLike) -> Iterator[Document]:
    """Documents from a JSONL file written by `write_documents`."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield Document(text=row["text"], id=row["id"], source=row["source"], meta=row.get("meta", {}))
