"""The run's records in its workdir: config.yaml (the resolved config), run.json (what ran where),
launches.jsonl (one line per launch that trained: when, from which step, with which config).

A launch that is refused (a config that cannot resume) or has nothing left to do (a finished run)
writes none of them: a record never says something that did not happen. `check_writable` runs
before anything compiles, so an unwritable workdir is found at once, not at the first save.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from typing import Optional

import jax

from jaxlm import config as config_lib, storage
from jaxlm.config import Config, ConfigError
from jaxlm.parallel import pipeline


LAUNCHES = "launches.jsonl"


def check_writable(workdir: str, config: Config) -> None:
    """ConfigError, before any compute, when the run could not write its workdir: the folder itself
    (on Cloud Storage: its bucket), the files and folders it keeps there (a file where a folder
    belongs, or the other way round)."""
    def fail(what: str, why: str) -> None:
        raise ConfigError(f"workdir {workdir}: {what} {why}; choose another workdir (the `workdir` key) "
                          "or make this one writable")

    remote = storage.is_remote(workdir)
    problem = storage.bucket_problem(workdir)
    if problem:
        raise ConfigError(f"workdir {workdir}: {problem}; or choose another workdir (the `workdir` key)")
    if storage.isfile(workdir):
        fail("is a file,", "not a folder")
    try:
        storage.makedirs(workdir)
    except OSError as e:
        fail("cannot be created:", f"{e.strerror or e}")
    folders = ["checkpoints"] * config.checkpoint.enabled + ["tb"] * config.log.tensorboard
    files = ["config.yaml", "run.json", LAUNCHES, "metrics.jsonl", "incidents.jsonl"]
    for name in folders + files:
        path = storage.join(workdir, name)
        if name in folders and storage.isfile(path):
            fail(f"holds a file {name!r} where the run keeps its {name}/ folder;", "move it away")
        if name in files and storage.isdir(path):
            fail(f"holds a folder {name!r} where the run writes a file;", "move it away")
        if not remote and os.path.exists(path) and not os.access(path, os.W_OK | (os.X_OK if name in folders else 0)):
            fail(f"{name} is not writable;", "fix its permissions")
    try:
        storage.probe_write(workdir)
    except Exception as e:  # noqa: BLE001 - OSError locally; Cloud Storage clients raise their own kinds too
        fail("cannot be written:", f"{getattr(e, 'strerror', None) or e}")


def write_run_files(workdir: str, config: Config, mesh, param_count: int, start_step: int,
                    extra: Optional[dict] = None) -> int:
    """config.yaml and run.json (library versions, git SHA, devices, mesh, pipeline schedule, and
    `extra`'s keys: online RL's reference model) of this launch, which trains from `start_step`; a
    line for it in launches.jsonl. Returns its number (1 for the workdir's first)."""
    now = round(time.time(), 3)
    launches = storage.LineLog(storage.join(workdir, LAUNCHES), create=False)
    number = launches.count() + 1
    launches.append(json.dumps({"time": now, "step": int(start_step), "argv": sys.argv,
                                "config": config_lib.to_dict(config)}))
    storage.write_text(storage.join(workdir, "config.yaml"), config_lib.dump_yaml(config))
    run = {
        "time": now,
        "launch": number,
        "start_step": int(start_step),
        "host": socket.gethostname(),
        "argv": sys.argv,
        "python": platform.python_version(),
        "versions": library_versions(),
        "git_sha": git_sha(),
        "git_dirty": git_dirty(),  # uncommitted changes in the checkout (None: not a git checkout)
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "process_count": jax.process_count(),
        "mesh": dict(mesh.shape),
        "model_params": param_count,
    }
    stages = mesh.shape.get(pipeline.AXIS, 1)
    if stages > 1:  # the schedule at the full batch (a batch ramp starts with fewer micro-batches)
        t = config.train
        plan = pipeline.make_plan(config, stages, t.global_batch // t.micro_batch)
        run["pipeline"] = {**dataclasses.asdict(plan), "bubble": plan.bubble, "describe": plan.describe()}
    run.update(extra or {})
    storage.write_text(storage.join(workdir, "run.json"), json.dumps(run, indent=2))
    return number


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


def git_dirty() -> Optional[bool]:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
