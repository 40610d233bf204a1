"""incidents.jsonl: an append-only record of what happened to a run besides training.

One JSON object per line: {"time", "kind", "step", ...details}. Checkpointing writes restore,
checkpoint_corrupt, checkpoint_discarded, config_changed, optimizer_reset, data_setup_changed and
preemption (docs/checkpointing.md); the loss-spike handling adds its own. Only process 0 writes,
and every line goes to disk at once so a killed run loses none.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from jaxlm import storage

FILENAME = "incidents.jsonl"


class Incidents:
    def __init__(self, workdir: str, enabled: bool = True, writer: Optional[Any] = None):
        """writer: anything with `text(tag, text, step)` (the run's MetricsWriter), for TensorBoard."""
        self.enabled = enabled
        self.path = storage.join(workdir, FILENAME)
        self._writer = writer
        # present (maybe empty) in every run's workdir; on Cloud Storage rewritten whole at every incident
        self._log = storage.LineLog(self.path) if enabled else None

    def record(self, kind: str, step: int, **details: Any) -> dict:
        entry = {"time": round(time.time(), 3), "kind": kind, "step": int(step), **details}
        if self.enabled:
            line = json.dumps(entry, default=str)
            self._log.append(line)
            if self._writer is not None:
                self._writer.text(f"incidents/{kind}", line, int(step))
        return entry


def read_incidents(workdir: str) -> list[dict]:
    """All incidents of a run, oldest first ([] if there are none)."""
    path = storage.join(workdir, FILENAME)
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
