"""The unit every data_prep stage passes on: one document and where it came from."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Document:
    text: str
    id: str  # stable and unique: "<source>/<file>:<line or index>", so reports can name the origin
    source: str  # the config's source name; weights and per-source reports key on it
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
