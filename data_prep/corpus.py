"""The corpus every Python installation carries, so the demo needs no download.

- prose: `pydoc_data.topics.topics`, the language reference topics behind `help()` (~80 topics, ~0.5 MB);
- code: the standard library's own `.py` files (~700 files, ~12 MB without the test suites).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig

from data_prep.errors import SourceError

# test suites are large, repetitive and full of deliberately broken encodings; leave them out
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def pydoc_topics() -> list[tuple[str, str]]:
    """(topic name, text) pairs, sorted by name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise SourceError("this Python has no pydoc_data package; use another source type") from None
    return sorted(topics.items())


def pydoc_topic(name: str) -> str:
    return dict(pydoc_topics())[name]


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(max_files: int | None = None, max_bytes: int | None = None) -> list[str]:
    """Paths of standard-library .py files, relative to `stdlib_dir()`, sorted.

    With a cap, files are taken in the order of a hash of their path (a stable, spread-out
    sample: not just the modules starting with 'a') until max_files or max_bytes is reached.
    """
    root = stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.endswith(".py") and os.path.getsize(path) > 0:  # empty __init__.py files are no documents
                found.append(os.path.relpath(path, root))
    if not found:
        raise SourceError(f"no standard-library .py files under {root} (a stripped Python?); use another source type")
    if max_files is None and max_bytes is None:
        return sorted(found)
    found.sort(key=lambda rel: hashlib.sha1(rel.encode()).digest())
    chosen, total = [], 0
    for rel in found:
        size = os.path.getsize(os.path.join(root, rel))
        if max_files is not None and len(chosen) >= max_files:
            break
        if max_bytes is not None and total + size > max_bytes:
            continue  # a smaller file may still fit
        chosen.append(rel)
        total += size
    return sorted(chosen)
