"""A prepared dataset on Cloud Storage (`gs://BUCKET/PATH`), read through a copy on local disk.

The ArrayRecord reader opens local files only, and training reads records of every shard at
random, epoch after epoch; so each machine copies the dataset once, into
`$JAXLM_DATA_CACHE/<bucket>/<path>` (default `~/.cache/jaxlm/datasets`), and reads the copy.

The copy follows the manifest: every shard it lists, and the tokenizer and chat template
(instruction data) when the bucket holds them (training reads neither; evaluation does). Each file is checked against the manifest as it arrives (bytes, sha256) and only then
moved into place; the manifest is written last. A later start finds the manifest equal to the
bucket's and reads the copy at once; a copy cut short, or a dataset prepared again, copies only
the files that are missing or changed. Processes of one machine may copy at the same time: each
writes its own temporary files and moves them into place whole.

A dataset bigger than a machine's disk: mount the bucket with Cloud Storage FUSE (gcsfuse) and
give the mounted folder as a local path; it is then read in place (docs/cloud_storage.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Optional

from jaxlm import storage
from jaxlm.data import format as fmt
from jaxlm.data.format import DataFormatError

CACHE_ENV = "JAXLM_DATA_CACHE"
_BLOCK = 16 << 20  # bytes per read while copying


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "jaxlm", "datasets")


def local_dataset(path: str) -> str:
    """`path` itself when it is local; for a dataset on Cloud Storage, its local copy, made or
    brought up to date first. Raises DataFormatError saying what is wrong and what to do."""
    if not storage.is_remote(path):
        return path
    remote = storage.absolute(path)
    if remote not in _copied:
        _copied[remote] = _copy(remote)
    return _copied[remote]


_copied: dict[str, str] = {}  # this process's copies: a run reads one version of a dataset throughout


def _copy(remote: str) -> str:
    problem = storage.bucket_problem(remote)
    if problem:
        raise DataFormatError(f"dataset {remote}: {problem}.")
    manifest_path = storage.join(remote, fmt.MANIFEST)
    if not storage.isfile(manifest_path):
        raise DataFormatError(
            f"{manifest_path} is missing: {remote!r} is not a finished data_prep output. Prepare the dataset "
            f"locally and copy the folder up (gcloud storage cp -r DATASET {storage.dirname(remote)}/).")
    text = storage.read_text(manifest_path)
    local = os.path.join(cache_root(), remote.replace("://", "/", 1))
    local_manifest = os.path.join(local, fmt.MANIFEST)
    try:
        manifest = json.loads(text)
        wanted = _files(local, manifest)
        shards = {s["path"] for split in manifest["splits"].values() for s in split["shards"]}
    except DataFormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataFormatError(f"{manifest_path} is not a data_prep manifest ({e}); re-run data_prep and "
                              "copy the folder up again.") from None
    earlier = _read(local_manifest)
    have = _files_or_none(local, earlier)
    todo = [f for f in wanted if not _cached(f, have, same_manifest=earlier == text)
            and (f[0] in shards or storage.exists(storage.join(remote, f[0])))]  # training reads no tokenizer
    if todo:
        total = sum(f[2] or 0 for f in todo)
        print(f"copying {len(todo)} files of dataset {remote} ({total / 1e6:,.1f} MB) to {local}",
              file=sys.stderr, flush=True)
    for rel, target, nbytes, sha256 in todo:
        _fetch(storage.join(remote, rel), target, nbytes, sha256, remote)
    if earlier != text:  # last: it says every file it names is in place
        _write_whole(local_manifest, text.encode())
    return local


# (path in the folder, local file, bytes or None, sha256 or None) of every file the manifest names
_File = tuple[str, str, Optional[int], Optional[str]]


def _files(local: str, manifest: dict[str, Any]) -> list[_File]:
    tok = manifest["tokenizer"]
    rel = tok.get("path", fmt.TOKENIZER)
    out = [(rel, fmt.inside(local, rel, "the tokenizer"), None, tok.get("sha256"))]
    chat = manifest.get("chat") or {}
    if chat.get("template"):
        out.append((chat["template"], fmt.inside(local, chat["template"], "the chat template"), None, None))
    for name, split in manifest["splits"].items():
        for s in split["shards"]:
            nbytes = None if s.get("bytes") is None else int(s["bytes"])
            out.append((s["path"], fmt.inside(local, s["path"], f"a {name} shard"), nbytes, s.get("sha256")))
    return out


def _files_or_none(local: str, text: Optional[str]) -> dict[str, _File]:
    """The files an earlier copy's manifest names, by path ({} when there is none or it is unreadable)."""
    try:
        return {f[0]: f for f in _files(local, json.loads(text))} if text else {}
    except (ValueError, KeyError, TypeError, AttributeError, DataFormatError):
        return {}


def _cached(file: _File, have: dict[str, _File], same_manifest: bool) -> bool:
    """Whether the local copy of `file` is the one the manifest names: copied and checked before
    for a manifest that gave it the same sha256 and byte count (a file the manifest gives no
    sha256: the same manifest), and still there, of that size."""
    rel, target, nbytes, sha256 = file
    old = have.get(rel)
    if old is None or old[2:] != (nbytes, sha256) or (sha256 is None and not same_manifest):
        return False
    return os.path.isfile(target) and (nbytes is None or os.path.getsize(target) == nbytes)


def _fetch(source: str, target: str, nbytes: Optional[int], sha256: Optional[str], remote: str) -> None:
    redo = f"re-run data_prep and copy the folder up to {remote} again"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    part = f"{target}.part-{os.getpid()}"
    digest, count = hashlib.sha256(), 0
    try:
        with storage.open_file(source, "rb") as src, open(part, "wb") as dst:
            for block in iter(lambda: src.read(_BLOCK), b""):
                digest.update(block)
                dst.write(block)
                count += len(block)
    except FileNotFoundError:
        _remove(part)
        raise DataFormatError(f"{source}, named in the manifest, is missing; {redo}.") from None
    except BaseException:
        _remove(part)
        raise
    if nbytes is not None and count != nbytes:
        _remove(part)
        raise DataFormatError(f"{source} has {count} bytes, the manifest says {nbytes}: it is truncated or was "
                              f"replaced; {redo}.")
    if sha256 and digest.hexdigest() != sha256:
        _remove(part)
        raise DataFormatError(f"{source} does not match its sha256 in the manifest: it is corrupt; {redo}.")
    os.replace(part, target)


def _write_whole(path: str, data: bytes) -> None:
    part = f"{path}.part-{os.getpid()}"
    with open(part, "wb") as f:
        f.write(data)
    os.replace(part, path)


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
