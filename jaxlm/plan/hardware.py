"""Accelerators by the planner's names (`v5p`, `h100`, ...); the table is `jaxlm.parallel.hardware`."""

from __future__ import annotations

import difflib

from jaxlm.parallel.hardware import ALIASES, DEVICES, GiB, Device
from jaxlm.plan import PlanError

__all__ = ["DEVICES", "GiB", "Device", "get_device"]


def get_device(name: str) -> Device:
    """A device by its planner name (`v5p`, `h100`, ...); unknown names raise PlanError."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in DEVICES:
        return DEVICES[key]
    choices = sorted(DEVICES) + sorted(ALIASES)
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise PlanError(f"unknown device type {name!r}{hint} Known: {', '.join(sorted(DEVICES))}")
