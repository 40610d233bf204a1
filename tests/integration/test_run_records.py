"""A workdir's records never say what did not happen: reruns of a finished or refused run leave them
alone, every launch that trains is in launches.jsonl, metrics.jsonl and incidents.jsonl, and a
workdir the run could not write stops it before any compute."""

import json

import pytest

from jaxlm.config import ConfigError, config_from_dict
from jaxlm.train.incidents import read_incidents
from jaxlm.train.loop import Trainer, train
from tests.helpers import metrics, run_config


def _config(dataset, workdir, **sections):
    return config_from_dict(run_config(workdir, dataset, steps=4, every=2, **sections))


@pytest.mark.parametrize("make, message", [
    (lambda w: w.write_text("not a folder"), r"is a file, not a folder"),
    (lambda w: (w.mkdir(), (w / "checkpoints").write_text("x")), r"holds a file 'checkpoints' where the run keeps"),
    (lambda w: (w.mkdir(), (w / "metrics.jsonl").mkdir()), r"holds a folder 'metrics.jsonl' where the run writes"),
])
def test_a_workdir_the_run_cannot_write_fails_before_compute(learnable_dataset, tmp_path, make, message):
    workdir = tmp_path / "run"
    make(workdir)
    with pytest.raises(ConfigError, match=message):
        Trainer(_config(learnable_dataset, workdir))


def _records(workdir):
    return {name: (workdir / name).read_text() for name in ("config.yaml", "run.json", "launches.jsonl")}


@pytest.mark.slow
def test_reruns_keep_the_records_and_every_launch_is_visible(learnable_dataset, tmp_path):
    workdir = tmp_path / "run"
    train(_config(learnable_dataset, workdir))
    first = _records(workdir)
    run = json.loads(first["run.json"])
    assert run["start_step"] == 0 and run["host"] and isinstance(run["time"], float) and "git_dirty" in run
    assert [json.loads(line)["step"] for line in first["launches.jsonl"].splitlines()] == [0]
    rows = metrics(workdir)
    assert all(isinstance(r["time"], float) for r in rows)
    assert [(r["step"], r["launch"]) for r in rows if "launch" in r] == [(0, 1)]
    assert not [i for i in read_incidents(str(workdir)) if i["kind"] == "restart"]

    # Finished: the same command again trains nothing and writes nothing.
    assert train(_config(learnable_dataset, workdir))["step"] == 4
    assert _records(workdir) == first
    # Refused (a model that cannot resume from the checkpoints): nothing written either.
    with pytest.raises(ConfigError, match=r"model\.d_model"):
        train(_config(learnable_dataset, workdir, model={"d_model": 64}))
    assert _records(workdir) == first

    # More steps: it trains on, and this launch is recorded beside the first.
    train(_config(learnable_dataset, workdir, train={"steps": 6}))
    launches = [json.loads(line) for line in (workdir / "launches.jsonl").read_text().splitlines()]
    assert [(l["step"], l["config"]["train"]["steps"]) for l in launches] == [(0, 4), (4, 6)]
    assert json.loads((workdir / "run.json").read_text())["start_step"] == 4
    assert [(r["step"], r["launch"]) for r in metrics(workdir) if "launch" in r] == [(0, 1), (4, 2)]
    restarts = [i for i in read_incidents(str(workdir)) if i["kind"] == "restart"]
    assert [(i["step"], i["launch"], i["resumed"]) for i in restarts] == [(4, 2, True)]
    assert any(i["kind"] == "config_changed" and i["step"] == 4 for i in read_incidents(str(workdir)))


def test_a_new_run_has_an_empty_incidents_file(learnable_dataset, tmp_path):
    Trainer(_config(learnable_dataset, tmp_path / "run")).close()
    assert (tmp_path / "run" / "incidents.jsonl").read_text() == ""
