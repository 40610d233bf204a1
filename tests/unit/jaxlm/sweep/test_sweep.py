"""jaxlm.sweep: spaces, grid/random/ablation sweeps run by subprocess, reports, resume, bad input.

Trials run tests/fixtures/fake_train.py, a stand-in with the trainer's CLI contract whose
val_loss is a known function of the overrides (so the winner is known in advance)."""

import json
import math
import os
import sys

import pytest
import yaml

from jaxlm.config import load_config
from jaxlm.sweep.__main__ import check_trial_configs, main
from jaxlm.sweep.ablation import SWITCHES, ablation_trials, parse_switches
from jaxlm.sweep.runner import RunSpec
from jaxlm.sweep.space import SweepError, format_value, grid_trials, parse_grid, parse_space, parse_value, random_trials
from tests.helpers import FIXTURES, REPO, run_python

FAKE = f"{sys.executable} {os.path.join(FIXTURES, 'fake_train.py')}"


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({"seed": 0, "model": {"family": "llama", "d_model": 64}, "optim": {"lr": 1e-3}}))
    return str(path)


def test_grid_and_values():
    grid = parse_grid(["optim.lr=1e-3,3e-3", "model.family=gpt2,llama", "model.tie_embeddings=true"])
    assert grid == {"optim.lr": [0.001, 0.003], "model.family": ["gpt2", "llama"], "model.tie_embeddings": [True]}
    assert len(grid_trials(grid)) == 4
    assert parse_value("3e-3") == 0.003 and parse_value("[1, 2]") == [1, 2]
    for v in (0.003, 7, True, "llama", [1, 2]):
        assert parse_value(format_value(v)) == v


def test_random_space_is_seeded_and_in_bounds():
    space = parse_space(["optim.lr=loguniform:1e-4:1e-2", "model.n_layers=int:2:4", "model.family=choice:gpt2,llama"])
    trials = random_trials(space, 50, seed=3)
    assert trials == random_trials(space, 50, seed=3) and trials != random_trials(space, 50, seed=4)
    assert all(1e-4 <= t["optim.lr"] <= 1e-2 and t["model.n_layers"] in (2, 3, 4) for t in trials)
    assert {t["model.family"] for t in trials} == {"gpt2", "llama"}
    for bad in ("optim.lr=normal:0:1", "optim.lr=loguniform:0:1", "optim.lr=uniform:2:1", "optim.lr"):
        with pytest.raises(SweepError):
            parse_space([bad])


def read_hparams(logdir):
    """{run name: {metric tag: value}} from the HParams event files tensorboardX wrote."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = {}
    for root, _, files in os.walk(logdir):
        for name in files:
            if not name.startswith("events.out"):
                continue
            for event in EventFileLoader(os.path.join(root, name)).Load():
                for value in event.summary.value:
                    if value.metadata.plugin_data.plugin_name == "hparams":
                        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                        if data.HasField("session_start_info"):
                            found.setdefault(os.path.basename(root), {})["hparams"] = dict(
                                (k, v.number_value or v.string_value) for k, v in data.session_start_info.hparams.items())
                    elif value.tag.startswith("hparam/"):
                        scalar = value.tensor.float_val[0] if value.tensor.float_val else value.simple_value
                        found.setdefault(os.path.basename(root), {})[value.tag] = scalar
    return found


def test_grid_sweep_end_to_end(tmp_path, base, capsys):
    out = tmp_path / "sweep"
    args = ["--config", base, "--grid", "optim.lr=1e-3,3e-3,1e-2,3e-2", "--set", "train.steps=5",
            "--train-cmd", FAKE, "--out", str(out)]
    assert main(args) == 0
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["optim"]["lr"] == 0.003 and best["train"]["steps"] == 5 and best["model"]["family"] == "llama"
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 1 ")]
    assert rows and "trial-001" in rows[0] and "2.0005" in rows[0]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # val_loss = 2 + (log10(lr) + 2.5)^2
    assert [r["metric"] for r in results] == pytest.approx([2.25, 2.000525, 2.25, 2.954766], abs=1e-5)
    assert [r["status"] for r in results] == ["ok"] * 4
    hp = read_hparams(str(out / "tb"))
    assert set(hp) == {"trial-000", "trial-001", "trial-002", "trial-003"}
    assert hp["trial-001"]["hparam/val_loss"] == pytest.approx(results[1]["metric"], rel=1e-6)
    assert hp["trial-001"]["hparams"]["optim.lr"] == pytest.approx(0.003)

    # a second run skips every finished trial
    stamps = {p: os.path.getmtime(out / p / "metrics.jsonl") for p in ("trial-000", "trial-001")}
    assert main(args) == 0
    assert {p: os.path.getmtime(out / p / "metrics.jsonl") for p in stamps} == stamps


def test_rerun_with_other_settings_is_refused(tmp_path, base, capsys):
    """A changed --set or grid value must not reuse the old trial folder (its checkpoints would resume)."""
    out = tmp_path / "sweep"
    args = ["--config", base, "--train-cmd", FAKE, "--out", str(out)]
    assert main(args + ["--grid", "optim.lr=1e-3", "--set", "train.steps=5"]) == 0
    record = json.loads((out / "trial-000" / "trial.json").read_text())
    assert record["command"][-2:] == ["optim.lr=0.001", f"workdir={out / 'trial-000'}"]
    capsys.readouterr()
    assert main(args + ["--grid", "optim.lr=1e-3", "--set", "train.steps=6"]) == 2
    assert "trial-000 holds a run of another command" in capsys.readouterr().err
    assert main(args + ["--grid", "optim.lr=3e-3", "--set", "train.steps=5"]) == 2
    assert main(args + ["--grid", "optim.lr=1e-3", "--set", "train.steps=5"]) == 0  # the same command: skipped


def test_random_sweep_picks_the_minimum(tmp_path, base):
    out = tmp_path / "random"
    assert main(["--config", base, "--random", "5", "--space", "optim.lr=loguniform:1e-4:1e-1", "--seed", "1",
                 "--train-cmd", FAKE, "--out", str(out)]) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    best = min(results, key=lambda r: r["metric"])
    assert yaml.safe_load((out / "best.yaml").read_text())["optim"]["lr"] == pytest.approx(best["overrides"]["optim.lr"])


def test_ablation_reports_differences(tmp_path, base):
    out = tmp_path / "ablation"
    assert main(["--config", base, "--ablate", "gpt2_block", "--switch", "slow_lr:optim.lr=1e-2",
                 "--seeds", "0,1", "--train-cmd", FAKE, "--out", str(out)]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2:] for line in (out / "ablation.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| switch")}
    # columns: runs, params (run.json's model_params), val_loss, Δ vs baseline, Δ %, spread of Δ, spread of val_loss
    # baseline (lr 1e-3): 2 + 0.25 + 0.01 * seed, mean over seeds 0, 1
    assert float(rows["baseline"][2]) == pytest.approx(2.255, abs=1e-4)
    assert float(rows["gpt2_block"][3]) == pytest.approx(0.1, abs=1e-4)  # Δ vs baseline
    assert float(rows["slow_lr"][3]) == pytest.approx(0.0, abs=1e-4)  # lr 1e-2 is as far from 10^-2.5
    assert rows["gpt2_block"][0].strip() == "2" and rows["gpt2_block"][1].strip() == "1.0K"
    # the seed shifts baseline and switch alike: paired by seed, Δ does not vary; the loss itself does
    assert float(rows["gpt2_block"][5]) == 0.0 and float(rows["gpt2_block"][6]) == pytest.approx(0.0071, abs=1e-4)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["params"] for r in results} == {1000}


def test_failed_trials_are_reported_and_the_sweep_goes_on(tmp_path, base):
    out = tmp_path / "fail"
    assert main(["--config", base, "--grid", "fake.fail=false,true", "--train-cmd", FAKE, "--out", str(out)]) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["ok", "failed"] and results[1]["returncode"] == 1
    assert "failing on purpose" in (out / "trial-001" / "train.log").read_text()
    assert main(["--config", base, "--grid", "fake.fail=true", "--train-cmd", FAKE, "--out", str(tmp_path / "f2")]) == 1


@pytest.mark.parametrize("args,message", [
    (["--grid", "optim.lr=1e-3", "--random", "2", "--space", "optim.lr=uniform:0:1"], "choose one mode"),
    ([], "choose one mode"),
    (["--ablate", "warp_drive"], "unknown ablation switch 'warp_drive'"),
    (["--grid", "optim.lr"], "must look like key.path="),
    (["--random", "2"], "at least one --space"),
    (["--grid", "optim.lr=1e-3", "--set", "train.steps"], "--set 'train.steps' must look like key.path=value"),
])
def test_bad_input_one_message_exit_2(base, args, message):
    proc = run_python("-m", "jaxlm.sweep", "--config", base, "--train-cmd", FAKE, *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_set_takes_several_overrides(tmp_path, base):
    out = tmp_path / "set"
    assert main(["--config", base, "--grid", "optim.lr=3e-3", "--set", "train.steps=5", "model.family=gpt2",
                 "--train-cmd", FAKE, "--out", str(out)]) == 0
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"]["steps"] == 5 and best["model"]["family"] == "gpt2"
    # the fake's penalty for gpt2 shows that the trainer received both overrides
    metric = json.loads((out / "results.jsonl").read_text())["metric"]
    assert metric == pytest.approx(2.1 + (math.log10(3e-3) + 2.5) ** 2, rel=1e-9)


DEMO = os.path.join(REPO, "configs", "demo.yaml")


def test_every_switch_is_a_valid_trainer_config():
    """Each built-in switch loads with jaxlm.config against the demo config (real keys, valid values)."""

    trials = ablation_trials(parse_switches(list(SWITCHES), []), [0])
    check_trial_configs(RunSpec(DEMO, "unused"), trials)
    gpt2 = load_config(DEMO, SWITCHES["gpt2_block"]).model
    assert gpt2.family == "gpt2" and load_config(DEMO).model.family == "llama"
    dropout = load_config(DEMO, SWITCHES["dropout"]).model
    assert (dropout.embed_dropout, dropout.attn_dropout, dropout.resid_dropout) == (0.1, 0.1, 0.1)
    assert load_config(DEMO, SWITCHES["untied"]).model.tie_embeddings is False
    assert load_config(DEMO, SWITCHES["qk_norm"]).model.qk_norm is True


def test_a_misspelt_key_stops_the_sweep_before_any_trial(tmp_path):
    out = tmp_path / "typo"
    proc = run_python("-m", "jaxlm.sweep", "--config", DEMO, "--out", str(out), "--switch",
                      "untied:model.tie_embedding=false")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trial untied" in proc.stderr and "did you mean 'model.tie_embeddings'" in proc.stderr
    assert not out.exists()


def test_help():
    proc = run_python("-m", "jaxlm.sweep", "--help")
    assert proc.returncode == 0 and "--ablate" in proc.stdout


@pytest.mark.slow
def test_ray_runs_trials_as_tasks(tmp_path, base):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    assert main(["--config", base, "--grid", "optim.lr=1e-3,3e-3", "--train-cmd", FAKE, "--out", str(out),
                 "--ray"]) == 0
    assert yaml.safe_load((out / "best.yaml").read_text())["optim"]["lr"] == 0.003
