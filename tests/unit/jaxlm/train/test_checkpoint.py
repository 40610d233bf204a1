"""CheckpointManager in-process: what is kept, when saves are due, checksums, resharded restores,
parameter export, and the data-position rules of a hot swap. Kill/resume runs: integration/test_resume*.py."""

import errno
import os
import signal
import time

import jax
import numpy as np
import pytest

from jaxlm.config import ConfigError, config_from_dict, to_dict
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train import checkpoint as ckpt, checkpoint_reader as reader
from jaxlm.train.incidents import Incidents, read_incidents
from jaxlm.train.resume import loader_state_for
from jaxlm.train import setup as run_setup
from jaxlm.train.state import init_state
from tests.helpers import run_python


def small_config(workdir, mesh=None, **checkpoint):
    return config_from_dict({
        "workdir": str(workdir),
        "data": {"seq_len": 16},
        "model": {"vocab_size": 96, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 32},
        "mesh": mesh or {"data": 1, "fsdp": 4, "tensor": 2},
        "train": {"steps": 100},
        "checkpoint": {"every_steps": 3, "keep_last": 2, "every_minutes": 0, "handle_signals": False, **checkpoint},
    })


def setup(config, devices=None):
    run = run_setup.build(config, mesh=build_mesh(config.mesh, devices))
    return run.spec, run.scheme.optimizer, run.shardings


@pytest.fixture(scope="module")
def base():
    """(spec, optimizer, shardings, state) of small_config on 8 devices, made once."""
    config = small_config("unused")
    spec, optimizer, shardings = setup(config)
    return spec, optimizer, shardings, init_state(config, spec, optimizer, shardings)


def loader_state(position=0, offset=0, **setup):
    base = {"sources": [{"documents": 10, "weight": 1.0}], "split": "train", "seq_len": 16, "batch_rows": 8,
            "seed": 0, "process_index": 0, "process_count": 1, "num_epochs": None, "shuffle": True}
    return {"version": 1, "stream": {"position": position, "offset": offset}, "setup": {**base, **setup}}


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_keeps_last_k_and_every_mth_step_and_ignores_unfinished(tmp_path, base):
    config = small_config(tmp_path, keep_last=2, keep_every_steps=5)
    state = base[3]
    manager = ckpt.CheckpointManager(str(tmp_path), config)
    for step in range(1, 13):
        assert manager.save(step, state, loader_state(step))
    assert not manager.save(12, state, loader_state(12))  # an existing step is not rewritten
    manager.wait()
    assert manager.all_steps() == [5, 10, 11, 12]
    manager.close()
    # A write cut short leaves only a temporary folder: never listed, removed before the next save.
    leftover = tmp_path / "checkpoints" / "13.orbax-checkpoint-tmp"
    (leftover / "state").mkdir(parents=True)
    manager = ckpt.CheckpointManager(str(tmp_path), config)
    assert manager.all_steps() == [5, 10, 11, 12]
    manager.save(13, state, loader_state(13))
    manager.close()
    assert not leftover.exists() and sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "12", "13", "5"]


def test_save_due_by_steps_time_and_end(tmp_path):
    manager = ckpt.CheckpointManager(str(tmp_path), small_config(tmp_path, every_steps=3, every_minutes=0.002))
    assert [manager.save_due(s) for s in (1, 2, 3)] == [None, None, "interval"]
    time.sleep(0.15)  # > 0.002 minutes since the manager started (no save yet)
    assert manager.save_due(4) == "time"
    assert manager.save_due(100) == "final"
    manager.close()
    off = ckpt.CheckpointManager(str(tmp_path / "off"), small_config(tmp_path, enabled=False))
    assert off.save_due(3) is None and off.save_due(100) is None
    off.close()


def test_checksums_catch_one_flipped_bit_and_ignore_sharding(base):
    state = base[3]
    sums = reader.checksums(state)
    assert set(sums) >= {"step", "lr_scale"} and all(isinstance(v, int) for v in sums.values())
    params = jax.device_get(state["params"])
    assert reader.checksums(params) == {k[len("params/"):]: v for k, v in sums.items() if k.startswith("params/")}
    leaf = max(jax.tree.leaves(params), key=lambda x: x.size).reshape(-1)  # float32
    flipped = leaf.copy()
    flipped.view(np.uint32)[17] ^= 1 << 9  # one bit of one float
    assert reader.checksums(flipped) != reader.checksums(leaf)
    swapped = leaf.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert swapped[3] != swapped[4] and reader.checksums(swapped) != reader.checksums(leaf)


@pytest.mark.parametrize("mesh, devices", [({"data": 1, "fsdp": 2, "tensor": 2}, 4),  # 8 devices -> 4
                                           ({"data": 1, "fsdp": 2, "tensor": 4}, 8)])  # another axis split
def test_restore_onto_another_mesh(tmp_path, base, mesh, devices):
    config = small_config(tmp_path)  # saved with fsdp=4, tensor=2 on 8 devices
    state = base[3]
    saver = ckpt.CheckpointManager(str(tmp_path), config)
    saver.save(7, state, loader_state(3, 5), {"detector": [1.5, 2]})
    saver.close()

    new_config = small_config(tmp_path, mesh=mesh)
    new_spec, new_optimizer, new_shardings = setup(new_config, jax.devices()[:devices])
    target = ckpt.abstract_state(new_config, new_spec, new_optimizer, new_shardings)
    manager = ckpt.CheckpointManager(str(tmp_path), new_config)
    restored = manager.restore_latest(target)
    manager.close()
    assert restored.step == 7 and restored.extra == {"detector": [1.5, 2]}
    assert restored.loader_state == {"0": loader_state(3, 5)}
    assert_trees_equal(restored.state, state)
    for leaf, sharding in zip(jax.tree.leaves(restored.state), jax.tree.leaves(new_shardings)):
        assert leaf.sharding == sharding and len(leaf.sharding.device_set) == devices


def test_model_shape_change_is_refused_naming_the_field(tmp_path, base):
    config = small_config(tmp_path)
    saver = ckpt.CheckpointManager(str(tmp_path), config)
    saver.save(3, base[3], loader_state())
    saver.close()
    for key, value in [("d_model", 64), ("vocab_size", 128)]:
        changed = config_from_dict({**_as_dict(config), "model": {**_as_dict(config)["model"], key: value}})
        target = ckpt.abstract_state(changed, *setup(changed))
        manager = ckpt.CheckpointManager(str(tmp_path), changed)
        with pytest.raises(ConfigError, match=rf"model\.{key} is \d+ there and {value} here"):
            manager.restore_latest(target)
        manager.close()


def _as_dict(config):
    return to_dict(config)


def test_restore_params_exports_parameters_only(tmp_path, base):
    config = small_config(tmp_path)
    state = base[3]
    manager = ckpt.CheckpointManager(str(tmp_path), config)
    manager.save(4, state, loader_state())
    manager.wait()
    manager.close()
    restored_config, params = reader.read_params(str(tmp_path))
    assert restored_config == config
    assert_trees_equal(params, state["params"])
    assert all(leaf.is_fully_addressable for leaf in jax.tree.leaves(params))
    with pytest.raises(ckpt.CheckpointError, match="no finished checkpoint"):
        reader.read_params(str(tmp_path / "checkpoints"), step=5)


def test_corrupt_checkpoint_is_reported_set_aside_and_the_previous_one_used(tmp_path, base):
    config = small_config(tmp_path)
    spec, optimizer, shardings, state = base
    manager = ckpt.CheckpointManager(str(tmp_path), config, incidents=Incidents(str(tmp_path)))
    manager.save(3, state, loader_state(3))
    manager.save(6, state, loader_state(6))
    manager.wait()
    data_files = [p for p in (tmp_path / "checkpoints" / "6" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files  # OCDBT keeps array bytes in d/ folders
    for path in data_files:  # truncate every array data file
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    restored = manager.restore_latest(ckpt.abstract_state(config, spec, optimizer, shardings))
    manager.close()
    assert restored.step == 3 and restored.loader_state["0"]["stream"]["position"] == 3
    corrupt = [i for i in read_incidents(str(tmp_path)) if i["kind"] == "checkpoint_corrupt"]
    assert [i["step"] for i in corrupt] == [6] and corrupt[0]["why"]
    assert os.path.isdir(tmp_path / "checkpoints.corrupt" / "6") and not os.path.exists(tmp_path / "checkpoints" / "6")


# ----------------------------------------------------------------------------------------------
# Data position on resume (resume.loader_state_for)


def test_loader_state_same_setup_continues_exactly():
    saved = {"0": loader_state(7, 3)}
    assert loader_state_for(saved, loader_state(), 0, 1) == (saved["0"], None)


def test_loader_state_batch_size_change_keeps_the_stream_position():
    state, derived = loader_state_for({"0": loader_state(7, 3)}, loader_state(batch_rows=16), 0, 1)
    assert state == loader_state(7, 3, batch_rows=16)
    assert derived["changed"] == ["batch_rows"] and derived["how"].startswith("exact")


def test_loader_state_row_shuffle_restarts_its_window_on_seq_len_change():
    def windowed(position, offset, window_index, pos_in_window, **setup):  # grain's WindowShuffle state
        s = loader_state(**setup)
        s["stream"] = {"parent_window_start_state": {"position": position, "offset": offset},
                       "window_index": window_index, "pos_in_window": pos_in_window}
        return s
    state, derived = loader_state_for({"0": windowed(7, 3, 2, 40)}, windowed(0, 0, 0, 0, seq_len=32), 0, 1)
    assert state == windowed(7, 3, 0, 0, seq_len=32)  # a new window from where the current one began
    assert derived["changed"] == ["seq_len"] and derived["how"].startswith("derived")
    state, derived = loader_state_for({"0": windowed(7, 3, 2, 40)}, windowed(0, 0, 0, 0, batch_rows=4), 0, 1)
    assert state == windowed(7, 3, 2, 40, batch_rows=4) and derived["how"].startswith("exact")


def test_loader_state_process_count_change_spreads_the_documents_read():
    saved = {"0": loader_state(10, 4, process_count=2), "1": loader_state(12, 0, process_index=1, process_count=2)}
    state, derived = loader_state_for(saved, loader_state(), 0, 1)
    assert state["stream"] == {"position": 22, "offset": 0} and "22 documents" in derived["how"]


def test_loader_state_mixture_change_keeps_the_document_count():
    new_setup = {"sources": [{"documents": 10, "weight": 1.0}, {"documents": 5, "weight": 0.5}]}
    state, derived = loader_state_for({"0": loader_state(9, 2)}, loader_state(**new_setup), 0, 1)
    assert state == loader_state(9, 0, **new_setup) and derived["changed"] == ["sources"]


# ----------------------------------------------------------------------------------------------


def test_second_signal_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from jaxlm.train.preemption import SignalWatcher\n"
        "w = SignalWatcher()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "assert w.signum == signal.SIGINT, w.signum\n"
        "print('first signal noted', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
        "print('not reached')\n")
    out = run_python("-c", script, timeout=120)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr
    assert "first signal noted" in out.stdout and "not reached" not in out.stdout
    assert "SIGTERM again: exiting now" in out.stderr


def test_discard_after_a_rollback_moves_newer_checkpoints_aside(tmp_path, base):
    config = small_config(tmp_path, keep_last=3)
    spec, optimizer, shardings, state = base
    manager = ckpt.CheckpointManager(str(tmp_path), config, incidents=Incidents(str(tmp_path)))
    for step in (3, 6, 9):
        manager.save(step, state, loader_state(step))
    assert manager.discard_after(3) == [6, 9]
    assert manager.all_steps() == [3] and manager.save(6, state, loader_state(6))  # the step can be redone
    manager.close()
    assert sorted(os.listdir(tmp_path / "checkpoints.rolled_back")) == ["6", "9"]
    assert [i["step"] for i in read_incidents(str(tmp_path)) if i["kind"] == "checkpoint_discarded"] == [6, 9]


@pytest.mark.parametrize("error", [MemoryError("out of host memory"), OSError(errno.EIO, "Input/output error")])
def test_a_failure_that_is_not_the_checkpoints_stops_the_restore_and_moves_nothing(tmp_path, base, monkeypatch,
                                                                                   error):
    config = small_config(tmp_path)
    spec, optimizer, shardings, state = base
    manager = ckpt.CheckpointManager(str(tmp_path), config, incidents=Incidents(str(tmp_path)))
    manager.save(3, state, loader_state(3))
    manager.wait()

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(ckpt, "restore_arrays", fail)  # the machine fails while the arrays are read
    with pytest.raises(type(error)):
        manager.restore_latest(ckpt.abstract_state(config, spec, optimizer, shardings))
    manager.close()
    assert os.path.isdir(tmp_path / "checkpoints" / "3") and not os.path.exists(tmp_path / "checkpoints.corrupt")
    assert not [i for i in read_incidents(str(tmp_path)) if i["kind"] == "checkpoint_corrupt"]
