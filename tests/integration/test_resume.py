"""Kill a real training process (`python -m jaxlm.main`) and start it again: the resumed run's loss
at every step, and its eval losses, must equal the uninterrupted run's bit for bit (8 CPU devices,
fixed seeds). Also: a kill in the middle of a checkpoint write, corrupt checkpoints, SIGTERM."""

import os
import random
import shutil
import signal

import numpy as np
import pytest

from jaxlm.config import ConfigError, config_from_dict
from jaxlm.train.loop import Trainer
from tests.helpers import (finished_checkpoints, incidents, kill, kill_and_resume, last_step, losses, run_config,
                           run_training, start_training, uninterrupted_run, wait_until, write_config,
                           write_run_dataset)

EVERY = 4  # checkpoint.every_steps
STEPS = 24


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_dataset, jax_cache):
    """The uninterrupted run: its workdir and {step: loss, ("val", step): val_loss}."""
    workdir, result = uninterrupted_run(tmp_path_factory.mktemp("reference"), run_dataset, jax_cache, steps=STEPS,
                                        every=EVERY)
    assert [k for k in result if not isinstance(k, int)] == [("val", s) for s in (6, 12, 18, 24)]
    return workdir, result


def config_for(tmp_path, run_dataset, **sections):
    return write_config(tmp_path / "config.yaml", run_config(tmp_path / "run", run_dataset, steps=STEPS, every=EVERY,
                                                             **sections))


@pytest.mark.parametrize("seed", [15])
def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(tmp_path, run_dataset, jax_cache, reference, seed):
    """The kill step is drawn from a seeded generator (the failure message names it), and the kill
    waits for a finished checkpoint, so every run of this test restores one."""
    kill_after = random.Random(seed).randint(EVERY + 1, STEPS - 3)
    config = config_for(tmp_path, run_dataset)
    workdir = tmp_path / "run"
    when = kill_and_resume(config, workdir, jax_cache, kill_after, STEPS)
    assert losses(workdir) == reference[1], when
    assert not [n for n in os.listdir(workdir / "checkpoints") if "tmp" in n]


def test_sigkill_during_a_checkpoint_write_uses_the_previous_one(tmp_path, run_dataset, jax_cache, reference):
    for attempt in range(3):  # the write lasts ~0.1 s: in the rare case the kill lands after it, go again
        workdir = tmp_path / f"run{attempt}"
        config = write_config(tmp_path / f"config{attempt}.yaml",
                              run_config(workdir, run_dataset, steps=STEPS, every=EVERY))
        proc = start_training(config, jax_cache)
        ckpt_dir = workdir / "checkpoints"

        def writing_a_second_checkpoint():
            names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
            return any(n.endswith(".orbax-checkpoint-tmp") for n in names) and any(n.isdigit() for n in names)

        wait_until(writing_a_second_checkpoint, proc, poll=0.001)
        kill(proc)
        unfinished = [n for n in os.listdir(ckpt_dir) if n.endswith(".orbax-checkpoint-tmp")]
        if unfinished:
            break
    assert unfinished, "three kills all landed after the write had finished"
    saved = finished_checkpoints(workdir)
    assert int(unfinished[0].split(".")[0]) > saved[-1]

    run_training(config, jax_cache)
    restores = [i["step"] for i in incidents(workdir) if i["kind"] == "restore"]
    assert restores == [saved[-1]]  # the previous, finished checkpoint: nothing lost
    assert losses(workdir) == reference[1]
    assert not [n for n in os.listdir(ckpt_dir) if "tmp" in n]


def _corrupt(checkpoint, how: str) -> None:
    data = sorted(p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.parent.name == "d")
    if how == "truncate":
        for p in data:
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) // 3)
    elif how == "flip":  # one byte in the middle of the largest array file
        p = max(data, key=os.path.getsize)
        with open(p, "r+b") as f:
            f.seek(os.path.getsize(p) // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0x10]))
    elif how == "missing item":
        shutil.rmtree(checkpoint / "meta")


def test_corrupt_latest_checkpoints_fall_back_to_the_last_good_one(tmp_path, run_dataset, jax_cache, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0] / "checkpoints", workdir / "checkpoints")
    assert finished_checkpoints(workdir) == [12, 16, 20, 24]
    for step, how in [(24, "truncate"), (20, "flip"), (16, "missing item")]:
        _corrupt(workdir / "checkpoints" / str(step), how)

    run_training(config_for(tmp_path, run_dataset), jax_cache)
    found = incidents(workdir)
    assert [(i["kind"], i["step"]) for i in found if i["kind"] in ("checkpoint_corrupt", "restore")] == [
        ("checkpoint_corrupt", 24), ("checkpoint_corrupt", 20), ("checkpoint_corrupt", 16), ("restore", 12)]
    assert sorted(os.listdir(workdir / "checkpoints.corrupt")) == ["16", "20", "24"]
    resumed = losses(workdir)
    assert sorted(k for k in resumed if isinstance(k, int)) == list(range(13, STEPS + 1))
    assert resumed == {k: v for k, v in reference[1].items() if (k if isinstance(k, int) else k[1]) > 12}


def test_sigterm_saves_exits_143_and_resumes_exactly(tmp_path, run_dataset, jax_cache, reference):
    config = config_for(tmp_path, run_dataset, checkpoint={"every_steps": 10, "keep_last": 4, "every_minutes": 0})
    workdir = tmp_path / "run"
    proc = start_training(config, jax_cache)
    wait_until(lambda: last_step(workdir) >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 128 + signal.SIGTERM
    stopped = [i for i in incidents(workdir) if i["kind"] == "preemption"]
    assert len(stopped) == 1 and stopped[0]["signal"] == "SIGTERM"
    assert finished_checkpoints(workdir)[-1] == stopped[0]["step"] == last_step(workdir)

    run_training(config, jax_cache)
    assert [i["step"] for i in incidents(workdir) if i["kind"] == "restore"] == [stopped[0]["step"]]
    assert losses(workdir) == reference[1]


# ----------------------------------------------------------------------------------------------
# Hot swap: resuming with changed settings (here from another run's checkpoint, checkpoint.restore_from)


def _trainer(tmp_path, name, run_dataset, reference, **sections):
    raw = run_config(tmp_path / name, run_dataset, steps=STEPS, every=EVERY, **sections)
    raw["checkpoint"]["restore_from"] = str(reference[0] / "checkpoints" / "12")
    return Trainer(config_from_dict(raw))


def test_batch_size_change_continues_the_data_stream_exactly(tmp_path, run_dataset, reference):
    same = _trainer(tmp_path, "same", run_dataset, reference)
    bigger = _trainer(tmp_path, "bigger", run_dataset, reference, train={"global_batch": 16})
    try:
        first, second = next(same.loader), next(same.loader)  # 8 rows each, as the saved run would go on
        merged = next(bigger.loader)  # 16 rows
        for key in first:
            np.testing.assert_array_equal(merged[key], np.concatenate([first[key], second[key]]))
        assert int(bigger.state["step"]) == 12
    finally:
        same.close()
        bigger.close()
    swapped = incidents(tmp_path / "bigger")
    assert [i["how"].split(":")[0] for i in swapped if i["kind"] == "data_setup_changed"] == ["exact"]
    # micro_batch defaults to global_batch and is resolved in the config, so it changed too (8 -> 16)
    assert {c["key"] for i in swapped if i["kind"] == "config_changed" for c in i["changes"]} == \
        {"train.global_batch", "train.micro_batch"}


@pytest.mark.parametrize("key, value", [("d_model", 64), ("vocab_size", 128)])
def test_model_shape_change_on_resume_stops_naming_the_field(tmp_path, run_dataset, reference, key, value):
    with pytest.raises(ConfigError, match=rf"model\.{key} is \d+ there and {value} here"):
        _trainer(tmp_path, "changed", run_dataset, reference, model={key: value})


def test_model_shape_change_on_the_command_line_is_one_clear_error(tmp_path, run_dataset, jax_cache, reference):
    config = config_for(tmp_path, run_dataset)
    shutil.copytree(reference[0] / "checkpoints", tmp_path / "run" / "checkpoints")
    proc = start_training(config, jax_cache, "model.n_layers=3")
    assert proc.wait(300) == 2
    with open(proc.log_path) as f:
        out = f.read()
    assert "error: the checkpoint" in out and "model.n_layers is 2 there and 3 here" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_resume_with_many_settings_changed_trains_on(tmp_path, run_dataset, jax_cache, reference):
    """lr, schedule, optimizer hyper-parameters and type, dropout, batch size and data mixture at once."""
    second = write_run_dataset(tmp_path / "second", seed=5, docs=100)
    raw = run_config(tmp_path / "run", run_dataset, steps=STEPS, every=EVERY)
    raw["checkpoint"]["restore_from"] = str(reference[0])  # its newest checkpoint: 24
    raw["train"]["steps"] = 30
    raw["optim"] = {"name": "lion", "lr": 1e-3, "b2": 0.98, "schedule": {"name": "linear", "warmup_steps": 0}}
    raw["model"]["resid_dropout"] = 0.1
    raw["train"]["global_batch"] = 16
    raw["data"]["sources"] = [{"path": str(run_dataset), "weight": 1.0}, {"path": str(second), "weight": 0.5}]
    run_training(write_config(tmp_path / "config.yaml", raw), jax_cache)

    found = {i["kind"]: i for i in incidents(tmp_path / "run")}
    assert found["restore"]["step"] == 24
    assert found["optimizer_reset"]["saved"] == "adamw" and found["optimizer_reset"]["now"] == "lion"
    assert {c["key"] for c in found["config_changed"]["changes"]} >= {
        "optim.name", "optim.lr", "optim.b2", "optim.schedule.name", "model.resid_dropout", "train.global_batch",
        "train.steps", "data.sources"}
    assert found["data_setup_changed"]["how"].startswith("derived")
    resumed = losses(tmp_path / "run")
    assert sorted(k for k in resumed if isinstance(k, int)) == list(range(25, 31))
    # Training goes on from the checkpoint's level (~2.0), not from scratch (ln 96 = 4.56 at step 1).
    assert reference[1][24] < 2.2 and max(resumed[s] for s in range(25, 31)) < 3.0, resumed
