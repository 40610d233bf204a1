"""Workdirs and datasets on Cloud Storage, against a local emulator of the Cloud Storage JSON API
(gcp-storage-emulator, started here in its own process by tests/fixtures/gcs_emulator.py): the Python clients (gcsfs,
google-cloud-storage) find it through STORAGE_EMULATOR_HOST, TensorStore (Orbax's array storage)
through TENSORSTORE_GCS_HTTP_URL with the fixed token GOOGLE_AUTH_TOKEN_FOR_TESTING.

A run with its workdir and dataset on gs:// is killed (SIGKILL) and resumed; its loss at every
step, and its eval losses, equal an uninterrupted local run's bit for bit.
"""

import os
import random
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxlm import storage
from jaxlm.config import ConfigError, config_from_dict
from jaxlm.data import remote
from jaxlm.data.format import DataFormatError
from jaxlm.main import main
from jaxlm.train.checkpoint_reader import read_params
from jaxlm.train.records import check_writable
from tests.helpers import (FIXTURES, finished_checkpoints, free_port, incidents, kill_and_resume, losses, run_config,
                           uninterrupted_run, write_config)

BUCKET = "jaxlm-test"
EVERY = 4  # checkpoint.every_steps
STEPS = 24


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator's URL; this module's processes (and the runs they start) use it for gs://."""
    pytest.importorskip("gcp_storage_emulator", reason="the gs:// tests need the dev extra's gcp-storage-emulator")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage (tensorboardX)
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore: Orbax's checkpoint arrays
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",  # TensorStore asks for no real credentials
        # gcsfs (read when it is imported) would ask the Storage Control API, which the emulator lacks,
        # for every bucket's layout
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        remote.CACHE_ENV: str(tmp_path_factory.mktemp("data_cache")),
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    pytest.importorskip("gcsfs", reason="gs:// paths need the gcs extra")
    log = open(tmp_path_factory.mktemp("emulator") / "emulator.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(FIXTURES, "gcs_emulator.py"), str(port),
                             BUCKET], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.read() == b"OK":
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Cloud Storage emulator did not start (see {log.name})")
            time.sleep(0.1)
    yield url
    mp.undo()
    proc.terminate()
    proc.wait(30)
    log.close()


def upload(local_dir, destination: str) -> None:
    for root, _, names in os.walk(local_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), local_dir)
            with open(os.path.join(root, name), "rb") as src, storage.open_file(storage.join(destination, rel), "wb") as dst:
                dst.write(src.read())


@pytest.fixture(scope="module")
def gs_dataset(emulator, run_dataset):
    upload(run_dataset, f"gs://{BUCKET}/data/tiny")
    return f"gs://{BUCKET}/data/tiny"


# ----------------------------------------------------------------------------------------------
# The path layer


def test_line_log_rewrites_the_object_only_when_synced_or_due(emulator):
    path = f"gs://{BUCKET}/logs/metrics.jsonl"
    log = storage.LineLog(path, max_delay=3600)
    assert storage.read_text(path) == ""  # created at once, empty
    log.append('{"step": 1}')
    log.append('{"step": 2}')
    assert storage.read_text(path) == ""  # not due yet: nothing uploaded
    log.sync()
    assert storage.read_text(path) == '{"step": 1}\n{"step": 2}\n'
    again = storage.LineLog(path)  # a resumed run goes on after the lines already there
    assert again.count() == 2
    again.append('{"step": 3}')  # max_delay 0: written at once
    assert storage.read_text(path).splitlines() == ['{"step": 1}', '{"step": 2}', '{"step": 3}']
    with pytest.raises(ValueError, match="cannot be appended"):
        storage.open_file(path, "a")


def test_move_a_folder_within_the_bucket(emulator):
    for name in ("a.txt", "sub/b.txt"):
        storage.write_text(f"gs://{BUCKET}/move/src/{name}", name)
    storage.move(f"gs://{BUCKET}/move/src", f"gs://{BUCKET}/move/elsewhere/dst")
    assert not storage.exists(f"gs://{BUCKET}/move/src")
    assert storage.listdir(f"gs://{BUCKET}/move/elsewhere/dst") == ["a.txt", "sub"]
    assert storage.read_text(f"gs://{BUCKET}/move/elsewhere/dst/sub/b.txt") == "sub/b.txt"
    assert storage.isdir(f"gs://{BUCKET}/move/elsewhere") and storage.isfile(f"gs://{BUCKET}/move/elsewhere/dst/a.txt")


def test_bucket_problem_names_the_missing_bucket(emulator):
    assert storage.bucket_problem(f"gs://{BUCKET}/anything") is None
    assert "bucket 'no-such-bucket' does not exist" in storage.bucket_problem("gs://no-such-bucket/run")
    assert storage.bucket_problem("gs:///run") == "names no bucket (write gs://BUCKET/PATH)"
    assert storage.bucket_problem("/local/folder") is None


# ----------------------------------------------------------------------------------------------
# Datasets: a checked local copy


def test_a_dataset_on_cloud_storage_is_copied_once_and_checked(emulator, run_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    upload(run_dataset, f"gs://{BUCKET}/copy/tiny")
    local = remote.local_dataset(f"gs://{BUCKET}/copy/tiny")
    assert local == str(tmp_path / "cache" / "gs" / BUCKET / "copy" / "tiny")
    shards = sorted(os.listdir(os.path.join(run_dataset, "shards")))
    assert len(shards) == 4 and f"copying {len(shards)} files" in capsys.readouterr().err  # (no tokenizer here)
    for rel in ["manifest.json"] + [f"shards/{n}" for n in shards]:
        with open(os.path.join(run_dataset, rel), "rb") as a, open(os.path.join(local, rel), "rb") as b:
            assert a.read() == b.read(), rel
    assert sorted(os.listdir(local)) == ["manifest.json", "shards"] and sorted(os.listdir(f"{local}/shards")) == shards

    # Another process (the memo is per process) finds the copy complete and copies nothing.
    remote._copied.clear()
    assert remote.local_dataset(f"gs://{BUCKET}/copy/tiny") == local
    assert "copying" not in capsys.readouterr().err
    # A local file lost since: only that one is copied again.
    shard = next(os.path.join(local, "shards", n) for n in sorted(os.listdir(os.path.join(local, "shards"))))
    os.remove(shard)
    remote._copied.clear()
    remote.local_dataset(f"gs://{BUCKET}/copy/tiny")
    assert "copying 1 files" in capsys.readouterr().err and os.path.isfile(shard)


def test_a_corrupt_or_missing_shard_on_cloud_storage_is_one_clear_error(emulator, run_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    upload(run_dataset, f"gs://{BUCKET}/bad/tiny")
    shard = sorted(storage.listdir(f"gs://{BUCKET}/bad/tiny/shards"))[0]
    path = f"gs://{BUCKET}/bad/tiny/shards/{shard}"
    with storage.open_file(path, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    with storage.open_file(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(DataFormatError, match=f"{path} does not match its sha256 in the manifest"):
        remote.local_dataset(f"gs://{BUCKET}/bad/tiny")
    assert not [n for n in os.listdir(tmp_path / "cache" / "gs" / BUCKET / "bad" / "tiny" / "shards") if "part" in n]
    assert not os.path.exists(tmp_path / "cache" / "gs" / BUCKET / "bad" / "tiny" / "manifest.json")

    storage.remove(path)
    with pytest.raises(DataFormatError, match=f"{path}, named in the manifest, is missing"):
        remote.local_dataset(f"gs://{BUCKET}/bad/tiny")
    with pytest.raises(DataFormatError, match="manifest.json is missing: 'gs://jaxlm-test/nothing' is not a finished"):
        remote.local_dataset(f"gs://{BUCKET}/nothing")


# ----------------------------------------------------------------------------------------------
# Runs


def test_a_missing_bucket_is_one_clear_message_before_any_compute(emulator, gs_dataset, tmp_path, capsys):
    """Workdir, then dataset, in a bucket that does not exist: `python -m jaxlm.main` exits 2 with
    one line naming the bucket and what to do, before the step is compiled; nothing is written."""
    config = write_config(tmp_path / "config.yaml", run_config("gs://no-such-bucket/runs/r", gs_dataset))
    assert main(["--config", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: workdir gs://no-such-bucket/runs/r: bucket 'no-such-bucket' does not exist, or "
                          "these credentials cannot see it; create it (gcloud storage buckets create "
                          "gs://no-such-bucket)"), err
    assert "compiling" not in err and len(err.strip().splitlines()) == 1

    workdir = f"gs://{BUCKET}/runs/missing-data"
    config = write_config(tmp_path / "config2.yaml", run_config(workdir, "gs://no-such-data-bucket/tiny"))
    assert main(["--config", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.sources[0]: dataset gs://no-such-data-bucket/tiny: bucket "
                          "'no-such-data-bucket' does not exist"), err
    assert "compiling" not in err and len(err.strip().splitlines()) == 1
    assert not storage.exists(storage.join(workdir, "run.json")) and not finished_checkpoints(workdir)


def test_the_workdir_check_on_cloud_storage(emulator):
    """A writable prefix passes (its probe object is gone after); an object where the run keeps a
    folder is one message."""
    config = config_from_dict(run_config(f"gs://{BUCKET}/runs/check", "unused"))
    check_writable(f"gs://{BUCKET}/runs/check", config)
    assert storage.listdir(f"gs://{BUCKET}/runs/check") == []
    storage.write_text(f"gs://{BUCKET}/runs/check/checkpoints", "not a folder")
    with pytest.raises(ConfigError, match="holds a file 'checkpoints' where the run keeps its checkpoints/ folder"):
        check_writable(f"gs://{BUCKET}/runs/check", config)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_dataset, jax_cache):
    """The uninterrupted run, local workdir and local dataset: its workdir and {step: loss, ("val", step): val_loss}."""
    return uninterrupted_run(tmp_path_factory.mktemp("reference"), run_dataset, jax_cache, steps=STEPS, every=EVERY)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3])
def test_sigkill_and_resume_on_cloud_storage_is_bitwise_exact(emulator, gs_dataset, reference, jax_cache, tmp_path, seed):
    """Workdir (records, metrics, incidents, TensorBoard, checkpoints) and dataset on gs://: killed
    at a seeded random step after a checkpoint, run again, every loss equals the local run's."""
    kill_after = random.Random(seed).randint(EVERY + 1, STEPS - 3)
    workdir = f"gs://{BUCKET}/runs/resume-{seed}"
    config = write_config(tmp_path / "config.yaml",
                          run_config(workdir, gs_dataset, steps=STEPS, every=EVERY, log={"tensorboard": True}))
    when = kill_and_resume(config, workdir, jax_cache, kill_after, STEPS, poll=0.2)  # (each look is a few requests)
    assert losses(workdir) == reference[1], when
    assert [i["launch"] for i in incidents(workdir) if i["kind"] == "restart"] == [2]
    assert len(storage.read_text(storage.join(workdir, "launches.jsonl")).splitlines()) == 2
    assert storage.isfile(storage.join(workdir, "config.yaml")) and storage.isfile(storage.join(workdir, "run.json"))
    assert finished_checkpoints(workdir)[-1] == STEPS
    # what eval, sample, export and init.from read: the final parameters, those of the local run
    config, params = read_params(workdir)
    _, expected = read_params(str(reference[0]))
    assert config.workdir == workdir
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), params, expected))

    # TensorBoard event files went to the bucket too: read back, the losses are the metrics' losses.
    local_tb = tmp_path / "tb"
    local_tb.mkdir()
    names = storage.listdir(storage.join(workdir, "tb"))
    assert len(names) == 2, names  # one event file per launch
    for name in names:
        with storage.open_file(storage.join(workdir, "tb", name), "rb") as f:
            (local_tb / name).write_bytes(f.read())
    scalars = {}
    for name in sorted(names):  # oldest first: the resumed run's values replace the killed one's
        events = EventAccumulator(str(local_tb / name))
        events.Reload()
        scalars.update({e.step: e.value for e in events.Scalars("loss")})
    assert sorted(scalars) == list(range(1, STEPS + 1))
    assert scalars == {s: reference[1][s] for s in range(1, STEPS + 1)}  # float32 values, as logged
