"""Loss-spike handling end to end in the Trainer: LR blow-up -> rollback -> data skipped -> the run
ends where a clean run ends; a persistent fault stops the run after max_rollbacks; clean runs
(a tiny one here, Tiny Shakespeare and the demo as slow tests) raise no false alarm."""

import json
import math
import os

import jax
import numpy as np
import pytest

from jaxlm.config import config_from_dict, load_config
from jaxlm.train import spikes
from jaxlm.train.checkpoint import CheckpointManager
from jaxlm.train.incidents import read_incidents
from jaxlm.train.loop import Trainer
from jaxlm.train import setup
from jaxlm.train.setup import make_loader
from tests.helpers import run_python, write_markov_dataset

VOCAB = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("spike_data") / "ds"
    return write_markov_dataset(root, VOCAB)


def _config(dataset, workdir, steps=160, faults=(), **spike_options):
    return config_from_dict({
        "workdir": str(workdir), "seed": 0,
        "data": {"sources": [{"path": dataset}], "seq_len": 32},
        "model": {"family": "llama", "vocab_size": VOCAB, "d_model": 32, "n_layers": 2, "n_heads": 4,
                  "n_kv_heads": 2, "max_seq_len": 32},
        "optim": {"lr": 1e-2, "schedule": {"name": "cosine", "warmup_steps": 10}},
        "train": {"steps": steps, "global_batch": 8, "log_every": 1, "eval_every": steps, "eval_batches": 8},
        "mesh": {"data": -1},
        "log": {"progress": False},
        "checkpoint": {"every_steps": 20, "every_minutes": 0, "keep_last": 3, "handle_signals": False},
        "spikes": {"warmup_steps": 30, **spike_options},
        "faults": list(faults),
    })


def _train(config):
    trainer = Trainer(config)
    try:
        return trainer.run()
    finally:
        trainer.close()


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def _kinds(workdir, *kinds):
    return [e for e in read_incidents(str(workdir)) if e["kind"] in kinds]


@pytest.fixture(scope="module")
def clean_run(dataset, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("clean")
    return workdir, _train(_config(dataset, workdir))


def test_clean_run_has_no_false_alarm(clean_run):
    workdir, summary = clean_run
    assert _kinds(workdir, "skip", "spike", "rollback", "halt", "fault") == []
    rows = _rows(workdir)
    assert len(rows) == 160 and all(r["skips"] == 0 and r["rollbacks"] == 0 for r in rows)
    assert max(r["spike_score"] for r in rows) < 4  # well below the thresholds (6 for the loss, 8 for the grad norm)
    assert summary["val_loss"] < 1.6  # learned (log 4 = 1.39 is the floor)


def test_lr_blowup_rolls_back_skips_the_data_and_ends_like_the_clean_run(dataset, clean_run, tmp_path):
    clean_dir, clean = clean_run
    workdir = tmp_path / "run"
    fault = {"kind": "lr", "step": 100, "steps": 5, "factor": 50.0}
    config = _config(dataset, workdir, faults=[fault])
    trainer = Trainer(config)
    try:
        summary = trainer.run()
        fresh = make_loader(config, "train")  # the same data stream, from its start
    finally:
        trainer.close()

    # The blown-up update of step 100 shows at step 101; flags persist; checkpoint 100 holds that
    # update, so the rollback goes to 80 and skips the data of steps 81 .. trigger + margin.
    (rollback,) = _kinds(workdir, "rollback")
    skips = _kinds(workdir, "skip")
    assert skips[0]["step"] == 101 and len(skips) >= 5
    (spike,) = _kinds(workdir, "spike")
    assert spike["step"] == rollback["onset"] == 101
    trigger = rollback["step"]
    assert rollback["to_step"] == 80 and rollback["steps_lost"] == trigger - 80
    assert rollback["skipped_data_steps"] == [81, trigger + 10] and rollback["skipped_batches"] == trigger - 70
    assert rollback["lr_scale"] == 0.5 and rollback["lr_until"] == 80 + 200
    assert [e["step"] for e in _kinds(workdir, "checkpoint_discarded")] == [100]
    assert [e["step"] for e in _kinds(workdir, "fault")] == [100, 101, 102, 103, 104][: trigger - 99]

    rows = _rows(workdir)
    after = [r for r in rows[rows.index(next(r for r in rows if r["step"] == trigger)) + 1:]]
    assert after[0]["step"] == 81 and after[-1]["step"] == 160
    assert all(r["skipped"] == 0 and r["rollbacks"] == 1 for r in after)
    assert after[0]["skips"] == len(skips)
    assert all(math.isclose(r["lr"], 0.5 * clean_r["lr"], rel_tol=1e-5)
               for r, clean_r in zip(after, _rows(clean_dir)[80:]))

    # Deterministic data skip: the final checkpoint's data position is the stream's position after
    # 80 + skipped + 80 batches.
    for _ in range(80 + rollback["skipped_batches"] + 80):
        next(fresh)
    expected = fresh.get_state()
    fresh.close()
    reader = CheckpointManager(str(workdir), config, read_only=True)
    try:
        assert reader.read_meta(160)["loader"]["0"] == expected
        assert reader.read_meta(160)["extra"]["spikes"]["good_checkpoints"][:4] == [20, 40, 60, 80]
    finally:
        reader.close()

    assert abs(summary["val_loss"] - clean["val_loss"]) < 0.02 * clean["val_loss"]

    # TensorBoard: the scalars and a text summary per incident.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(workdir / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"spike_score", "skips", "rollbacks"} <= set(tags["scalars"])
    assert max(e.value for e in events.Scalars("rollbacks")) == 1.0
    assert "incidents/rollback/text_summary" in tags["tensors"]


def test_persistent_fault_stops_after_max_rollbacks_and_keeps_the_last_good_checkpoint(dataset, tmp_path):
    workdir = tmp_path / "run"
    fault = {"kind": "lr", "step": 60, "steps": 3, "factor": 1000.0, "persistent": True}  # beats the lowered LR
    config = _config(dataset, workdir, faults=[fault], max_rollbacks=2)
    trainer = Trainer(config)
    try:
        with pytest.raises(spikes.TrainingHalted) as e:
            trainer.run()
    finally:
        trainer.close()
    message = str(e.value)
    assert message.startswith("training stopped at step 6")
    assert "2 rollbacks already done (spikes.max_rollbacks)" in message
    assert "Last good checkpoint: step 40" in message and "What to do:" in message
    assert message.count("rollback at step") == 2 and "halt at step" in message
    assert [r["to_step"] for r in _kinds(workdir, "rollback")] == [40, 40]
    (halt,) = _kinds(workdir, "halt")
    assert halt["last_good_checkpoint"] == 40

    # The good checkpoint is intact (it restores with verified checksums) and is the newest one, so
    # rerunning the command resumes from it.
    reader = CheckpointManager(str(workdir), config, read_only=True)
    try:
        assert reader.all_steps() == [20, 40]
        restored = reader.restore_step(40, _abstract(config))
        assert int(restored.state["step"]) == 40
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored.state["params"])))
    finally:
        reader.close()


def _abstract(config):
    return setup.build(config).abstract()


# ----------------------------------------------------------------------------------------------
# Long clean runs on real data: no skip, no rollback.


def _prepare(recipe, output):
    run_python("-m", "data_prep", "--config", f"data_prep/configs/{recipe}.yaml", f"output={output}", check=True)
    return str(output)


def _train_cli(recipe, data, workdir):
    """The recipe as a user runs it (one CPU device, not the tests' eight)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = run_python("-m", "jaxlm.main", "--config", f"configs/{recipe}.yaml", f"workdir={workdir}",
                        f"data.sources=[{{path: {data}}}]", "log.progress=false", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_config(os.path.join(workdir, "config.yaml"))


def _assert_no_alarm(workdir, steps):
    assert _kinds(workdir, "skip", "spike", "rollback", "halt") == []
    rows = _rows(workdir)
    assert rows[-1]["step"] == steps and rows[-1]["skips"] == 0 and rows[-1]["rollbacks"] == 0
    return rows


@pytest.mark.slow
def test_tiny_shakespeare_2000_steps_no_false_alarm(shared_data, tmp_path):
    data = _prepare("shakespeare_char", tmp_path / "data")
    config = _train_cli("shakespeare_char", data, tmp_path / "run")
    _assert_no_alarm(tmp_path / "run", 2000)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        val = [r["val_loss"] for r in map(json.loads, f) if "val_loss" in r]
    assert config.train.steps == 2000 and len(val) == 8 and val[-1] < 2.0  # it learned (from ~4.2)


@pytest.mark.slow
def test_demo_run_no_false_alarm(tmp_path):
    data = _prepare("demo", tmp_path / "data")
    config = _train_cli("demo", data, tmp_path / "run")
    _assert_no_alarm(tmp_path / "run", config.train.steps)
