"""One path layer for what a run reads and writes: local folders and Cloud Storage (`gs://`) alike.

The workdir's files (config.yaml, run.json, launches.jsonl, metrics.jsonl, incidents.jsonl), its
checkpoint folders and a dataset's files are reached through these functions. They use
`etils.epath`, the path library Orbax uses too: a local path goes through `os`, a `gs://` path
through fsspec's gcsfs (the `gcs` extra). Two kinds of file are written by their own libraries,
which speak Cloud Storage themselves: checkpoint arrays (TensorStore, under Orbax) and TensorBoard
event files (tensorboardX). The ArrayRecord reader opens local files only, so a dataset on Cloud
Storage is read through a local copy (jaxlm/data/remote.py).

Object stores have no append and no rename: `LineLog` keeps an append-only file's lines and
rewrites the whole object when synced; `move` copies, then deletes.

This module sits in the lowest layer (beside config.py) and imports nothing from jaxlm except the
extras check, so every layer, and the data loader's worker processes, can use it.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from typing import Optional

import fsspec
from etils import epath

from jaxlm.extras import require

# gcsfs caches folder listings forever by default: another process's writes (another host of the
# slice, a resumed run) would stay unseen. A run lists rarely, so it always asks.
for _protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def is_remote(path) -> bool:
    """Whether `path` is a URL (gs://bucket/...) rather than a local path."""
    return "://" in str(path)


def _check_backend(path: str) -> None:
    if str(path).startswith("gs://"):
        require("gcs", "gcsfs", needed_by=f"{path} (a Cloud Storage path)")


def absolute(path) -> str:
    """A local path made absolute; a URL as it is (trailing slashes dropped)."""
    path = str(path)
    if is_remote(path):
        _check_backend(path)
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}"
    return os.path.abspath(path)


def join(path, *names: str) -> str:
    path = str(path)
    return posixpath.join(path, *names) if is_remote(path) else os.path.join(path, *names)


def dirname(path) -> str:
    path = str(path)
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def basename(path) -> str:
    path = str(path)
    return posixpath.basename(path) if is_remote(path) else os.path.basename(path)


def _p(path) -> epath.Path:
    return epath.Path(str(path))


def exists(path) -> bool:
    return _p(path).exists()


def isdir(path) -> bool:
    """A folder; on Cloud Storage, a prefix that holds objects (or the bucket itself)."""
    return _p(path).is_dir()


def isfile(path) -> bool:
    p = _p(path)
    return p.exists() and not p.is_dir()


def makedirs(path) -> None:
    """Creates a folder and its parents (nothing to do on Cloud Storage, which has no folders)."""
    _p(path).mkdir(parents=True, exist_ok=True)


def listdir(path) -> list[str]:
    """Names of what a folder holds ([] when it does not exist)."""
    p = _p(path)
    if not p.is_dir():
        return []
    return sorted(child.name for child in p.iterdir())


def open_file(path, mode: str = "r"):
    """A file object; "w" on Cloud Storage uploads the object when it is closed."""
    if "a" in mode and is_remote(path):
        raise ValueError(f"{path}: objects cannot be appended to; write through LineLog")
    if "b" in mode:
        return _p(path).open(mode)
    return _p(path).open(mode, encoding="utf-8")


def read_text(path) -> str:
    with open_file(path) as f:
        return f.read()


def write_text(path, text: str) -> None:
    """The whole file at once (on Cloud Storage one upload: readers see the old or the new object)."""
    with open_file(path, "w") as f:
        f.write(text)


def remove(path) -> None:
    _p(path).unlink()


def move(source, destination) -> None:
    """Moves a file or a folder. On Cloud Storage every object is copied inside the store (nothing
    passes through this machine), then the source deleted."""
    source, destination = str(source), str(destination)
    if is_remote(source) or is_remote(destination):
        fs, _ = fsspec.core.url_to_fs(source)
        fs.copy(source, destination, recursive=True)  # (not fs.mv: it tries the newer moveTo call first,
        fs.rm(source, recursive=True)                 # which not every endpoint has, retrying for ~30 s)
        return
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    os.replace(source, destination)


def bucket_problem(path) -> Optional[str]:
    """Why `path` cannot be used, when it is on Cloud Storage and its bucket cannot be reached; else None."""
    path = str(path)
    if not path.startswith("gs://"):
        return None
    bucket = path[len("gs://"):].split("/", 1)[0]
    if not bucket:
        return "names no bucket (write gs://BUCKET/PATH)"
    try:
        found = _p(f"gs://{bucket}").exists()
    except Exception as e:  # noqa: BLE001 - credentials, network: the message is the story
        return f"cannot reach bucket {bucket!r} ({type(e).__name__}: {e})"
    if not found:
        return (f"bucket {bucket!r} does not exist, or these credentials cannot see it; create it "
                f"(gcloud storage buckets create gs://{bucket}) or name another")
    return None


def probe_write(folder) -> None:
    """Writes and deletes a small file in `folder`; raises OSError when that fails."""
    probe = _p(join(folder, f".jaxlm-write-probe-{uuid.uuid4().hex[:12]}"))
    probe.write_text("")
    probe.unlink()


class LineLog:
    """An append-only text file of lines (the .jsonl records), on local disk or Cloud Storage.

    Local: every line goes to disk as it is appended (a killed run loses none). Cloud Storage
    objects cannot be appended to: the lines are kept here and the whole object is rewritten, at
    once when `max_delay` is 0, else when `max_delay` seconds have passed since the last write, and
    whenever the owner calls `sync()` (before a checkpoint is saved, at the end of a run).
    """

    def __init__(self, path, *, max_delay: float = 0.0, create: bool = True):
        self.path = str(path)
        self.remote = is_remote(path)
        self.max_delay = max_delay
        self._chunks: list[str] = []
        self._pending = False
        self._synced_at = time.monotonic()
        if self.remote:
            text = read_text(path) if exists(path) else ""
            self._chunks = [line + "\n" for line in text.splitlines() if line.strip()]
            if create and not exists(path):
                write_text(path, "")
        elif create:
            with open(self.path, "a", encoding="utf-8"):
                pass

    def count(self) -> int:
        """Lines so far."""
        if self.remote:
            return len(self._chunks)
        if not os.path.exists(self.path):
            return 0
        with open(self.path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())

    def append(self, line: str) -> None:
        if not self.remote:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            return
        self._chunks.append(line + "\n")
        self._pending = True
        if time.monotonic() - self._synced_at >= self.max_delay:
            self.sync()

    def sync(self) -> None:
        """Writes what was appended since the last write (Cloud Storage; local lines are written already)."""
        if self.remote and self._pending:
            write_text(self.path, "".join(self._chunks))
            self._pending = False
            self._synced_at = time.monotonic()
