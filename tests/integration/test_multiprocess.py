"""Two real processes on localhost, started by launch/local.py, train like one process holding
the same global batch."""

import json
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import yaml

from jaxlm.config import ConfigError, load_config
from jaxlm.data.loader import build_loader
from jaxlm.parallel import distributed, mesh as mesh_lib
from jaxlm.train.step import BATCH_KEYS
from tests.helpers import REPO, max_rel, random_docs, run_python, train_keeping_first_grads, write_dataset

STEPS = 5


def _write_config(tmp_path):
    data = write_dataset(tmp_path / "data", {"train": random_docs(200, seed=1, high=128, max_len=40),
                                              "val": random_docs(20, seed=2, high=128, max_len=40)},
                         vocab_size=128)
    config = {
        "workdir": str(tmp_path / "run"),
        "data": {"sources": [{"path": data}], "seq_len": 16, "prefetch": 0},
        "model": {"family": "llama", "vocab_size": 128, "d_model": 32, "n_layers": 2, "n_heads": 4,
                  "n_kv_heads": 2, "max_seq_len": 16},
        "mesh": {"data": -1},
        "optim": {"lr": 1e-2, "schedule": {"warmup_steps": 1}},
        "train": {"steps": STEPS, "global_batch": 8, "log_every": 1, "eval_every": 0},
        "checkpoint": {"enabled": False},
        "log": {"progress": False, "tensorboard": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _batches_of_both_processes(config):
    """The global batches two processes read: each its own rows (process i of 2, loaded as the
    trainer loads them), concatenated."""
    loaders = [build_loader(sources=[(s.path, s.weight) for s in config.data.sources], split="train",
                            seq_len=config.data.seq_len, batch_rows=config.train.global_batch // 2,
                            seed=config.seed, process_index=i, process_count=2, worker_count=0, prefetch=0,
                            model_vocab_size=config.model.vocab_size, shuffle_rows=config.data.shuffle_rows)
               for i in range(2)]
    batches = []
    for _ in range(STEPS):
        parts = [next(loader) for loader in loaders]
        batches.append({k: np.concatenate([p[k] for p in parts])[None] for k in BATCH_KEYS})
    for loader in loaders:
        loader.close()
    return batches


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    config_path = _write_config(tmp_path)
    result = run_python(os.path.join(REPO, "launch", "local.py"), "--processes", "2", "--", "--config", config_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[0] done:" in result.stdout and "[1] done:" in result.stdout
    with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    two = np.array([r["loss"] for r in sorted(rows, key=lambda r: r["step"]) if "loss" in r])
    mfu = [r["mfu"] for r in rows if "mfu" in r]
    assert mfu and all(0 < m < 1 for m in mfu)  # against one peak for the whole run (both processes)
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["process_count"] == 2 and run_json["mesh"]["data"] == 2

    config = load_config(config_path)
    one, _, _ = train_keeping_first_grads(config, _batches_of_both_processes(config), devices=jax.devices()[:2])
    assert len(two) == STEPS
    assert max_rel(one, two) <= 1e-5


def test_explicit_flags_must_come_together():
    with pytest.raises(ConfigError, match="--coordinator needs --num_processes and --process_id"):
        distributed.initialize("localhost:1234", num_processes=2)
    with pytest.raises(ConfigError, match=r"--process_id must be in \[0, 2\)"):
        distributed.initialize("localhost:1234", num_processes=2, process_id=2)
    with pytest.raises(ConfigError, match="need --coordinator"):
        distributed.initialize(None, process_id=0)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_NTASKS": "16", "SLURM_PROCID": "3"}, "slurm"),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),  # a one-task job step is one process
    ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}, "gke-tpu"),
    ({"TPU_WORKER_HOSTNAMES": "t1"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476"}, "explicit"),
])
def test_multi_host_environments_are_detected(monkeypatch, env, expected):
    for name in ("SLURM_NTASKS", "SLURM_PROCID", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                 "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "_on_tpu_vm", lambda: False)  # this machine is no TPU VM
    assert distributed.detect() == expected


def test_a_batch_shard_spread_over_processes_is_refused():
    """Each process loads its own rows; devices that must hold the same rows (one tensor x pipe
    group) must be one process's. 4 processes of 2 devices, in process-major order as JAX lists them."""

    devices = np.array([SimpleNamespace(id=i, process_index=i // 2) for i in range(8)])

    def check(**sizes):
        sizes = {"data": 1, "fsdp": 1, "tensor": 1, "pipe": 1, **sizes}
        mesh_lib._check_processes_own_rows(devices.reshape([sizes[a] for a in mesh_lib.AXES]), sizes)

    check(data=4, pipe=2)
    check(data=2, fsdp=2, tensor=2)
    with pytest.raises(ConfigError, match=r"a tensor x pipe group of 4 devices spans processes.*within one "
                                          r"process's 2 devices"):
        check(data=2, tensor=2, pipe=2)
