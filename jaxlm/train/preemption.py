"""Preemption: SIGTERM/SIGINT ask for a checkpoint and a clean exit; a second signal exits at once.

Cloud TPU, SLURM and Kubernetes announce preemption with SIGTERM some seconds before SIGKILL; Ctrl-C
sends SIGINT. The handler only sets a flag; the training loop sees it at the next step boundary,
saves, and raises `Preempted`. With several processes the signal may reach only some of them, so
they agree (a tiny all-gather every few steps, `processes_agree`) before anyone saves.

Exit status: after the checkpoint is written the process exits with 128 + the signal number (143
for SIGTERM, 130 for SIGINT), the shell's convention for "ended by this signal". A supervisor
(SLURM requeue, a Kubernetes Job, a `until ...; do` loop) then knows the run is not finished and
starts it again; exit status 0 is kept for "train.steps reached".
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """Raised by the loop after the preemption checkpoint is saved; exits the program with 128+signum
    and no traceback (a SystemExit), while `finally` blocks still run."""

    def __init__(self, signum: int, step: int):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step


class SignalWatcher:
    """Turns the first SIGTERM/SIGINT into a flag (`.signum`); the second one ends the process."""

    def __init__(self, enabled: bool = True):
        self.signum: Optional[int] = None
        self._previous: dict[int, object] = {}
        # Python only lets the main thread install handlers; elsewhere (a notebook worker thread)
        # signals keep their default behaviour.
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            print(f"\n{signal.Signals(signum).name} again: exiting now without a checkpoint",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)  # threads (an async save) must not hold the exit up
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this step, "
              "then exiting (send it again to exit at once)", file=sys.stderr, flush=True)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def processes_agree(flags: np.ndarray) -> np.ndarray:
    """Per-process int32 flags -> (process_count, n) of every process's flags; a collective, so every
    process must call it at the same step. One process needs no communication."""
    flags = np.asarray(flags, np.int32)
    if jax.process_count() == 1:
        return flags[None]
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(flags))
