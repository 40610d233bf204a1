"""Multi-host start-up: `jax.distributed.initialize` when (and only when) the run spans processes.

Explicit flags win; otherwise Cloud TPU pod slices and SLURM jobs with several tasks are detected
from their environment (JAX reads the details itself). A single process needs nothing.
"""

from __future__ import annotations

import os
from typing import Optional

import jax


def _multi_host_environment() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    explicit = coordinator is not None
    if not explicit and not _multi_host_environment():
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        # CPU processes exchange collectives through gloo (the default CPU backend has none).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()
