"""The run's records in its workdir: config.yaml (the resolved config) and run.json (what ran where)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Optional

import jax

from jaxlm import config as config_lib
from jaxlm.config import Config
from jaxlm.parallel import pipeline


def write_run_files(workdir: str, config: Config, mesh, param_count: int) -> None:
    """config.yaml and run.json (library versions, git SHA, devices, mesh, pipeline schedule)."""
    with open(os.path.join(workdir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(config_lib.dump_yaml(config))
    run = {
        "argv": sys.argv,
        "python": platform.python_version(),
        "versions": library_versions(),
        "git_sha": git_sha(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "process_count": jax.process_count(),
        "mesh": dict(mesh.shape),
        "model_params": param_count,
    }
    stages = mesh.shape.get(pipeline.AXIS, 1)
    if stages > 1:  # the schedule at the full batch (a batch ramp starts with fewer micro-batches)
        t = config.train
        plan = pipeline.make_plan(config, stages, t.global_batch // (t.micro_batch or t.global_batch))
        run["pipeline"] = {**dataclasses.asdict(plan), "bubble": plan.bubble, "describe": plan.describe()}
    with open(os.path.join(workdir, "run.json"), "w", encoding="utf-8") as f:
        json.dump(run, f, indent=2)


def library_versions() -> dict:
    names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "array-record", "sentencepiece",
             "tensorboardX", "numpy"]
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_sha() -> Optional[str]:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None

