"""Test helper (no tests here): tiny training runs in subprocesses, killed and resumed for real.

Runs go through `python -m jaxlm.main` exactly as a user starts them. They share a persistent JAX
compilation cache (one per test session), so only the first run of a config pays for compiling.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

from jaxlm import storage
from test_data_loader_util import write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 96


def learnable_docs(n: int, seed: int) -> list:
    """Documents a tiny model learns within a few steps: each token is the previous one plus 7."""
    rng = np.random.default_rng(seed)
    docs = []
    for length in rng.integers(8, 60, n):
        doc = 3 + (rng.integers(0, VOCAB - 3) + 7 * np.arange(length)) % (VOCAB - 3)
        doc[-1] = 2  # EOS
        docs.append(doc)
    return docs


def make_dataset(root, seed: int = 0, docs: int = 300) -> str:
    return write_dataset(root, {"train": learnable_docs(docs, seed), "val": learnable_docs(20, seed + 1)},
                         vocab_size=VOCAB)


def tiny_config(workdir, dataset, *, steps: int = 24, every: int = 4, **sections) -> dict:
    """A run of a ~30k-parameter llama on 8 CPU devices (data=4, fsdp=2): seconds per run."""
    config = {
        "workdir": str(workdir),
        "data": {"sources": [{"path": str(dataset)}], "seq_len": 16},
        "model": {"vocab_size": VOCAB, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                  "max_seq_len": 32},
        "mesh": {"data": 4, "fsdp": 2},
        "train": {"steps": steps, "global_batch": 8, "log_every": 1, "eval_every": 6, "eval_batches": 2,
                  "peak_flops": 1e9},
        "optim": {"lr": 1e-2, "schedule": {"warmup_steps": 2}},
        "log": {"progress": False, "tensorboard": False},
        "checkpoint": {"every_steps": every, "keep_last": 4, "every_minutes": 0},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


def write_config(path, config: dict) -> str:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return str(path)


def env(cache_dir, devices: int = 8) -> dict:
    e = dict(os.environ)
    e.update({
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONPATH": REPO + os.pathsep + e.get("PYTHONPATH", ""),
    })
    return e


def start(config_path, cache_dir, *args: str, devices: int = 8) -> subprocess.Popen:
    """`python -m jaxlm.main --config C args...`; its output goes to `proc.log_path`."""
    log_path = f"{config_path}.{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jaxlm.main", "--config", str(config_path), *args],
                                cwd=REPO, env=env(cache_dir, devices), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    return proc


def run(config_path, cache_dir, *args: str, expect: int = 0, devices: int = 8) -> None:
    proc = start(config_path, cache_dir, *args, devices=devices)
    code = proc.wait(600)
    if code != expect:
        raise AssertionError(f"exit status {code}, expected {expect}:\n{tail_log(proc)}")


def uninterrupted_run(root, dataset, cache_dir, *, steps: int, every: int) -> tuple:
    """A tiny run from start to end in `root`/run: its workdir and losses (see `losses`)."""
    config = write_config(root / "config.yaml", tiny_config(root / "run", dataset, steps=steps, every=every))
    run(config, cache_dir)
    result = losses(root / "run")
    assert sorted(k for k in result if isinstance(k, int)) == list(range(1, steps + 1))
    return root / "run", result


def kill_and_resume(config_path, workdir, cache_dir, kill_after: int, steps: int, poll: float = 0.01) -> str:
    """Starts the run, SIGKILLs it once it has logged step `kill_after` (or later, before `steps`)
    and finished a checkpoint, and runs it again to the end, which must restore the newest
    checkpoint. Returns what the failure messages of the caller's checks should say."""
    proc = start(config_path, cache_dir)
    wait_until(lambda: last_step(workdir) >= kill_after and finished_checkpoints(workdir), proc, poll=poll)
    kill(proc)
    killed_at, saved = last_step(workdir), finished_checkpoints(workdir)
    assert killed_at < steps and saved, (killed_at, saved)
    run(config_path, cache_dir)
    restores = [i["step"] for i in incidents(workdir) if i["kind"] == "restore"]
    assert restores == [saved[-1]], f"killed after step {killed_at} with checkpoints {saved}"
    return f"killed after step {killed_at}, checkpoints {saved}"


def tail_log(proc: subprocess.Popen, chars: int = 4000) -> str:
    with open(proc.log_path) as f:
        return f.read()[-chars:]


def metrics(workdir) -> list[dict]:
    """The run's metrics.jsonl rows; the workdir may be local or on Cloud Storage."""
    path = storage.join(workdir, "metrics.jsonl")
    if not storage.exists(path):
        return []
    lines = storage.read_text(path).split("\n")
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the kill
            pass
    return out


def losses(workdir) -> dict:
    """{step: loss} and {("val", step): val_loss}; a step logged twice (before a kill and after the
    resume) keeps its last value."""
    out = {}
    for m in metrics(workdir):
        if "loss" in m:
            out[m["step"]] = m["loss"]
        if "val_loss" in m:
            out[("val", m["step"])] = m["val_loss"]
    return out


def last_step(workdir) -> int:
    return max([m["step"] for m in metrics(workdir) if "loss" in m], default=0)


def finished_checkpoints(workdir) -> list[int]:
    """Committed checkpoint steps. Locally Orbax renames a finished one into place; on Cloud Storage
    (no rename) it writes into the step's folder and adds commit_success.txt last."""
    d = storage.join(workdir, "checkpoints")
    remote = storage.is_remote(d)
    return sorted(int(n) for n in storage.listdir(d)
                  if n.isdigit() and (not remote or storage.exists(storage.join(d, n, "commit_success.txt"))))


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before the moment to kill it:\n"
                                 f"{tail_log(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait(60)


def incidents(workdir) -> list[dict]:
    from jaxlm.train.incidents import read_incidents
    return read_incidents(str(workdir))


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(config_path, cache_dir, count: int = 2, devices: int = 4) -> list[subprocess.Popen]:
    """`count` processes of one run on localhost (jax.distributed, gloo), `devices` CPU devices each."""
    coordinator = f"localhost:{free_port()}"
    return [start(config_path, cache_dir, "--coordinator", coordinator, "--num_processes", str(count),
                  "--process_id", str(i), devices=devices) for i in range(count)]


def run_processes(config_path, cache_dir, count: int = 2, devices: int = 4) -> None:
    procs = start_processes(config_path, cache_dir, count, devices)
    codes = [p.wait(600) for p in procs]
    if codes != [0] * count:
        raise AssertionError(f"exit statuses {codes}:\n" + "\n".join(tail_log(p) for p in procs))
