"""incidents.jsonl: an append-only record of what happened to a run besides training.

One JSON object per line: {"time", "kind", "step", ...details}. Checkpointing writes restore,
checkpoint_corrupt, checkpoint_discarded, config_changed, optimizer_reset, data_setup_changed and
preemption (docs/checkpointing.md); the loss-spike handling adds its own. Only process 0 writes,
and every line goes to disk at once so a killed run loses none.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

FILENAME = "incidents.jsonl"


class Incidents:
    def __init__(self, workdir: str, enabled: bool = True, writer: Optional[Any] = None):
        """writer: anything with `text(tag, text, step)` (the run's MetricsWriter), for TensorBoard."""
        self.enabled = enabled
        self.path = os.path.join(workdir, FILENAME)
        self._writer = writer
        if enabled:  # present (maybe empty) in every run's workdir
            open(self.path, "a", encoding="utf-8").close()

    def record(self, kind: str, step: int, **details: Any) -> dict:
        entry = {"time": round(time.time(), 3), "kind": kind, "step": int(step), **details}
        if self.enabled:
            line = json.dumps(entry, default=str)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            if self._writer is not None:
                self._writer.text(f"incidents/{kind}", line, int(step))
        return entry


def read_incidents(workdir: str) -> list[dict]:
    """All incidents of a run, oldest first ([] if there are none)."""
    path = os.path.join(workdir, FILENAME)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
