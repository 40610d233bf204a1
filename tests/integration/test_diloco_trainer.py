"""DiLoCo through the Trainer (diloco.enabled=true): logging, evaluation and export of the global
parameters, exact resume from a checkpoint taken between synchronisations, loss-spike rollbacks,
and the setups it refuses before anything compiles. 8 CPU devices: 2 replicas x fsdp 2 x tensor 2."""

import os
import shutil

import jax
import numpy as np
import pytest

from jaxlm.config import ConfigError, config_from_dict
from jaxlm.train import checkpoint, checkpoint_reader
from jaxlm.train.incidents import read_incidents
from jaxlm.train.loop import Trainer, train
from jaxlm.train.optimizer import make_schedule
from tests.helpers import losses, metrics, write_markov_dataset

STEPS, H, EVERY = 11, 2, 3  # syncs at 2, 4, .., 10 and the last step, 11; checkpoints at 3, 6, 9, 11


def _config(learnable_dataset, workdir, **sections):
    raw = {
        "workdir": str(workdir), "seed": 0,
        "data": {"sources": [{"path": learnable_dataset}] if learnable_dataset else [], "seq_len": 32},
        "model": {"family": "llama", "vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4,
                  "n_kv_heads": 2, "max_seq_len": 32},
        "optim": {"lr": 1e-2, "schedule": {"name": "cosine", "warmup_steps": 3}},
        # two micro-batches per step: each replica accumulates over its rows of both
        "train": {"steps": STEPS, "global_batch": 8, "micro_batch": 4, "log_every": 1, "eval_every": 6,
                  "eval_batches": 2},
        "mesh": {"data": 2, "fsdp": 2, "tensor": 2},
        "diloco": {"enabled": True, "inner_steps": H},
        "checkpoint": {"every_steps": EVERY, "every_minutes": 0, "keep_last": 10, "async_save": False,
                       "handle_signals": False},
        "log": {"progress": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def reference(learnable_dataset, tmp_path_factory):
    """The uninterrupted run: (workdir, its config, host copy of the final state)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    config = _config(learnable_dataset, workdir)
    trainer = Trainer(config)
    try:
        trainer.run()
        state = jax.device_get(trainer.state)
        assert trainer.evaluate() == metrics(workdir)[-1]["val_loss"]  # eval reads the global parameters
    finally:
        trainer.close()
    return workdir, config, state


def test_trains_logs_and_exports_the_global_parameters(reference):
    workdir, _, state = reference
    rows = metrics(workdir)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    for key in ("loss", "lr", "grad_norm", "tokens_seen", "diloco_sync", "skipped", "spike_score"):
        assert all(key in r for r in steps), key
    assert all("tokens_per_sec" in r and "mfu" in r for r in steps[1:])
    assert [r["diloco_sync"] for r in steps] == [0.0, 1.0] * 5 + [1.0]  # every H-th step, and the last
    assert steps[-1]["loss"] < 0.85 * steps[0]["loss"]
    assert all(200 < r["tokens"] <= 8 * 32 for r in steps)  # the whole batch's: summed over the replicas
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [6, 11] and evals[1]["val_loss"] < evals[0]["val_loss"]

    # The last step synchronised: every replica holds the global parameters, which are what
    # jaxlm.eval / jaxlm.sample / jaxlm.export read from the workdir.
    for g, r in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(state["replicas"]["params"]), strict=True):
        assert r.shape == (2,) + g.shape
        np.testing.assert_array_equal(r[0], g)
        np.testing.assert_array_equal(r[1], g)
    _, exported = checkpoint_reader.read_params(str(workdir))
    for a, b in zip(jax.tree.leaves(jax.device_get(exported)), jax.tree.leaves(state["params"]), strict=True):
        np.testing.assert_array_equal(a, b)

    # The checkpoint holds the whole DiLoCo state and says so.
    reader = checkpoint.CheckpointManager(str(workdir), _config(None, workdir), read_only=True)
    try:
        assert reader.all_steps() == [3, 6, 9, 11]
        meta = reader.read_meta(9)
        assert meta["extra"]["diloco"]["replicas"] == 2
        assert {"outer_opt_state", "replicas"} <= {k.split("/")[0] for k in meta["checksums"]}
    finally:
        reader.close()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(workdir / "tb"))
    events.Reload()
    assert {"loss", "val_loss", "diloco_sync", "grad_norm"} <= set(events.Tags()["scalars"])


def test_resume_between_synchronisations_is_bitwise_exact(learnable_dataset, reference, tmp_path):
    """A run stopped after checkpoint 3 (replicas one step past the sync at 2) and started again
    logs exactly the uninterrupted run's losses from step 4 on."""
    ref_dir, _, ref_state = reference
    workdir = tmp_path / "run"
    os.makedirs(workdir / "checkpoints")
    shutil.copytree(ref_dir / "checkpoints" / "3", workdir / "checkpoints" / "3")
    trainer = Trainer(_config(learnable_dataset, workdir))
    try:
        assert int(trainer.state["step"]) == 3
        trainer.run()
        state = jax.device_get(trainer.state)
    finally:
        trainer.close()
    assert [e["step"] for e in read_incidents(str(workdir)) if e["kind"] == "restore"] == [3]
    expected = {k: v for k, v in losses(ref_dir).items() if (k[1] if isinstance(k, tuple) else k) > 3}
    assert losses(workdir) == expected
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_array_equal(a, b)


def _copy_checkpoints(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0] / "checkpoints", workdir / "checkpoints")
    return workdir


@pytest.mark.parametrize("change, message", [
    ({"diloco": {"enabled": False}}, r"saved by a DiLoCo run \(2 replicas\); resume it with diloco.enabled=true"),
    ({"mesh": {"data": 4, "fsdp": 1}}, r"holds 2 DiLoCo replicas, and this mesh has mesh.data=4"),
    ({"optim": {"name": "lion"}}, r"another DiLoCo state than this config makes .* replicas/opt_state"),
    ({"diloco": {"outer_momentum": 0.0}}, r"another DiLoCo state .* outer_opt_state"),
])
def test_a_resume_into_another_layout_is_refused_and_keeps_the_checkpoints(learnable_dataset, reference, tmp_path,
                                                                           change, message):
    workdir = _copy_checkpoints(reference, tmp_path)
    with pytest.raises(ConfigError, match=message):
        Trainer(_config(learnable_dataset, workdir, **change))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["11", "3", "6", "9"]  # nothing set aside
    assert not (workdir / "checkpoints.corrupt").exists()


def test_diloco_refuses_to_resume_a_data_parallel_checkpoint(learnable_dataset, tmp_path):
    plain = tmp_path / "plain"
    train(_config(learnable_dataset, plain, diloco={"enabled": False}, train={"steps": 1, "eval_every": 0}))
    with pytest.raises(ConfigError, match=r"diloco.enabled=true, but the checkpoint .*/1 was saved by a run "
                                          r"without DiLoCo"):
        Trainer(_config(learnable_dataset, plain))
    with pytest.raises(ConfigError, match=r"saved by a run without DiLoCo"):  # nor through restore_from
        Trainer(_config(learnable_dataset, tmp_path / "new", checkpoint={"restore_from": str(plain)}))
    assert os.listdir(plain / "checkpoints") == ["1"]


@pytest.mark.parametrize("change, message", [
    ({"mesh": {"data": 2, "fsdp": 1, "tensor": 1, "pipe": 4}, "model": {"n_layers": 4}},
     r"diloco runs replicas along mesh.data with mesh.pipe=1"),
])
def test_setups_diloco_cannot_run_fail_before_compiling(learnable_dataset, tmp_path, change, message, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled before refusing")
    monkeypatch.setattr(jax, "jit", no_compile)
    with pytest.raises(ConfigError, match=message):
        Trainer(_config(learnable_dataset, tmp_path / "bad", **change))


@pytest.mark.slow
def test_loss_spike_rolls_every_replica_back(tmp_path):
    """An LR blow-up on steps 25..29: the replicas skip flagged steps, flags persist, the run goes
    back to checkpoint 20 with half the learning rate on both replicas and finishes."""

    data = write_markov_dataset(tmp_path / "markov")
    workdir = tmp_path / "run"
    config = _config(data, workdir, train={"steps": 40, "eval_every": 40}, checkpoint={"every_steps": 10},
                     spikes={"warmup_steps": 10},
                     faults=[{"kind": "lr", "step": 25, "steps": 5, "factor": 50.0}])
    trainer = Trainer(config)
    try:
        summary = trainer.run()
        counters = trainer.scheme.spike_counters(trainer.state)
    finally:
        trainer.close()
    events = read_incidents(str(workdir))
    skips = [e["step"] for e in events if e["kind"] == "skip"]
    (rollback,) = [e for e in events if e["kind"] == "rollback"]
    assert skips and min(skips) > 25  # no false alarm before the fault (warm from step 10 on)
    # The blown-up update of step 25 shows in step 26's loss (the episode's onset); the replicas skip
    # once their losses pass loss_z, and the newest good checkpoint before the onset is 20.
    assert rollback["onset"] == 26 and rollback["to_step"] == 20 and rollback["lr_scale"] == 0.5
    rows = [r for r in metrics(workdir) if "loss" in r]
    after = rows[[r["step"] for r in rows].index(rollback["step"]) + 1:]
    assert after[0]["step"] == 21 and after[-1]["step"] == 40
    assert all(r["rollbacks"] == 1 and r["skipped"] == 0 for r in after)
    schedule = make_schedule(config.optim, config.train.steps)
    assert all(abs(r["lr"] - 0.5 * float(schedule(r["step"] - 1))) <= 1e-6 * r["lr"] for r in after)
    assert counters["rollbacks"] == 1 and counters["lr_scale"] == 0.5 and counters["skips"].shape == (2,)
    assert np.isfinite(summary["val_loss"]) and summary["val_loss"] < rows[0]["loss"]
