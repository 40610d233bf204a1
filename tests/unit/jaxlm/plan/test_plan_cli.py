"""python -m jaxlm.plan: commands, and one clear message (exit 2, no traceback) for bad input."""


import pytest
import yaml

from jaxlm.plan.__main__ import main
from tests.helpers import run_python


def run_cli(*args):
    return run_python("-m", "jaxlm.plan", *args)


def test_help():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "size" in proc.stdout and "memory" in proc.stdout


def test_size_by_flops_and_by_hardware(capsys):
    assert main(["--flops", "5.76e23"]) == 0
    out = capsys.readouterr().out
    assert "| approach1 | 66.7B" in out and "1.44T" in out
    assert main(["--devices", "256", "--device-type", "v5p", "--days", "10", "--mfu", "0.5"]) == 0
    assert "5.08e+22 FLOPs" in capsys.readouterr().out


def test_check(capsys):
    assert main(["check", "--params", "175e9", "--tokens", "300e9"]) == 0
    out = capsys.readouterr().out
    assert "C = 3.15e+23" in out and "under-trained" in out


def test_memory_from_preset_and_from_config(tmp_path, capsys):
    assert main(["memory", "--preset", "llama-8b", "--devices", "64", "--device-type", "v5p", "--batch", "256",
                 "--seq-len", "4096", "--remat", "full", "--loss-chunk", "4096", "--tokens", "1e12"]) == 0
    out = capsys.readouterr().out
    assert "recommended mesh for 64 x TPU v5p: data=" in out and "fits" in out and "device-hours" in out
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 256},
        "data": {"seq_len": 64}, "train": {"global_batch": 16, "steps": 100},
        "mesh": {"data": -1, "fsdp": 2}}))
    assert main(["memory", "--config", str(config), "--devices", "8", "--device-type", "v5e"]) == 0
    out = capsys.readouterr().out
    assert "mesh: data=4,fsdp=2,tensor=1,pipe=1" in out and "| total" in out
    assert "compute-optimal for this size" not in out  # the tokens come from the config's steps


@pytest.mark.parametrize("args,message", [
    (["--flops", "-1"], "must be positive"),
    (["--devices", "8", "--device-type", "v9", "--days", "1"], "unknown device type 'v9'"),
    (["memory", "--preset", "gpt2-124m", "--mesh", "data=3", "--batch", "8"], "splits the batch 3 ways"),
    (["memory", "--preset", "gpt2-124m", "--mesh", "data=2,tensor=5", "--batch", "8"], "tensor=5 must divide"),
    (["memory", "--preset", "llama-70b", "--devices", "8", "--device-type", "v5e", "--batch", "8"], "does not fit"),
    (["memory", "--preset", "nope"], "unknown model preset"),
    (["size"], "give a budget"),
])
def test_bad_input_one_message_exit_2(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
