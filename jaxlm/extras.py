"""Optional dependencies. A command that needs an extra it lacks says which one, in one line.

Every `require` names modules of one extra declared in setup.py; the error's message is the whole
story (`pip install "jaxlm[hf]"`), so a command prints it instead of a traceback.
"""

from __future__ import annotations

import importlib


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says what to install."""


def require(extra: str, *modules: str, needed_by: str) -> None:
    """Raises MissingExtra unless every module imports (they are imported here, once)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtra(f"{needed_by} needs {', '.join(missing)}, which is not installed: "
                           f'pip install "jaxlm[{extra}]"')
