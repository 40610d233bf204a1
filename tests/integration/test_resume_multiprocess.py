"""Two real processes on localhost (jax.distributed over gloo, 4 CPU devices each) train one run,
are killed or preempted, and resume: bitwise the same losses as their uninterrupted run. Process 0
alone writes logs; each process writes its own shards of the checkpoint."""

import os
import signal

import pytest

from tests.helpers import (finished_checkpoints, incidents, last_step, losses, metrics, run_config, run_processes,
                           start_processes, wait_until, write_config)


pytestmark = pytest.mark.slow  # five two-process runs: minutes on 2 cores

STEPS = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, jax_cache, run_dataset):
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "config.yaml", _config(root / "run", run_dataset))
    run_processes(config, jax_cache)
    logged = [m["step"] for m in metrics(root / "run") if "loss" in m]
    assert logged == list(range(1, STEPS + 1))  # once each: only process 0 writes metrics
    return jax_cache, run_dataset, losses(root / "run")


def _config(workdir, dataset):
    return run_config(workdir, dataset, steps=STEPS, every=4,
                      checkpoint={"every_steps": 4, "keep_last": 4, "every_minutes": 0, "agree_every_steps": 2})


def test_two_processes_killed_and_resumed_bitwise(tmp_path, setup):
    cache, dataset, reference = setup
    assert sorted(k for k in reference if isinstance(k, int)) == list(range(1, STEPS + 1))
    workdir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", _config(workdir, dataset))
    procs = start_processes(config, cache)
    wait_until(lambda: last_step(workdir) >= 9, procs[0])
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(60)
    saved = finished_checkpoints(workdir)
    assert saved, "no checkpoint before the kill"
    state = workdir / "checkpoints" / str(saved[-1]) / "state"
    assert sorted(n for n in os.listdir(state) if n.startswith("ocdbt.process_")) == ["ocdbt.process_0",
                                                                                    "ocdbt.process_1"]

    run_processes(config, cache)
    assert [i["step"] for i in incidents(workdir) if i["kind"] == "restore"] == [saved[-1]]
    assert losses(workdir) == reference
    assert sorted(os.listdir(workdir)) == sorted(["checkpoints", "config.yaml", "incidents.jsonl", "launches.jsonl",
                                                  "metrics.jsonl", "run.json"])


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, setup):
    cache, dataset, reference = setup
    workdir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", _config(workdir, dataset))
    procs = start_processes(config, cache)
    wait_until(lambda: last_step(workdir) >= 5, procs[0])
    procs[1].send_signal(signal.SIGTERM)  # only process 1 hears it
    assert [p.wait(120) for p in procs] == [128 + signal.SIGTERM] * 2
    stopped = [i for i in incidents(workdir) if i["kind"] == "preemption"]
    assert len(stopped) == 1 and stopped[0]["step"] % 2 == 0  # agreed at an agree_every_steps boundary
    assert finished_checkpoints(workdir)[-1] == stopped[0]["step"]

    run_processes(config, cache)
    assert losses(workdir) == reference
