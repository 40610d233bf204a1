"""Multi-host start-up: `jax.distributed.initialize` when (and only when) the run spans processes.

Explicit flags win (--coordinator host:port --num_processes N --process_id i, as
`launch/local.py` passes them; JAX's own JAX_COORDINATOR_ADDRESS works too). Otherwise the
environment tells: a SLURM job step with several tasks, a Cloud TPU VM (JAX reads the worker list
from the metadata server), or TPU workers listed by GKE. A single process needs nothing.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Optional

import jax

from jaxlm.config import ConfigError

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips sit on the PCI bus of a Cloud TPU VM under Google's id


def _on_tpu_vm() -> bool:
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor, encoding="ascii") as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def detect() -> Optional[str]:
    """The multi-process environment this process runs in: "explicit", "slurm", "gke-tpu",
    "cloud-tpu", or None (one process)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return "slurm"
    hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1:
        return "gke-tpu"
    if _on_tpu_vm():
        return "cloud-tpu"
    return None


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> Optional[str]:
    """Joins this process to the others (before JAX's first use); returns how (see `detect`)."""
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise ConfigError("--coordinator needs --num_processes and --process_id too "
                              "(e.g. --coordinator=10.0.0.1:1234 --num_processes=2 --process_id=0)")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id must be in [0, {num_processes}), got {process_id}")
        how = "explicit"
    elif num_processes is not None or process_id is not None:
        raise ConfigError("--num_processes/--process_id need --coordinator=host:port of process 0")
    else:
        how = detect()
        if how is None:
            return None
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        # CPU processes exchange collectives through gloo (the default CPU backend has none).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is not None:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()  # JAX reads SLURM's, the TPU metadata's or its own variables
    return how


def exit_process(code: int) -> None:
    """Ends this process with `code`. A process of a multi-process CPU run leaves without the
    interpreter's teardown: there the CPU client's destructor can wait forever on a thread stuck in
    gloo (jaxlib 0.10; about one exit in 30 of two processes on localhost). Everything the run
    writes is closed by then; only the output streams need flushing."""
    if jax.distributed.is_initialized() and jax.default_backend() == "cpu":
        sys.stdout.flush()
        sys.stderr.flush()
        jax.distributed.shutdown()  # a barrier: no process leaves while another still needs it
        os._exit(code)
    sys.exit(code)
