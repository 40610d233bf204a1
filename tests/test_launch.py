"""The launch scripts: the exact commands their --dry-run prints, their errors, and shellcheck."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ["tpu.sh", "slurm.sh", "slurm.sbatch"]
TRAIN = ["--config", "configs/demo.yaml", "data.sources=[{path: data/demo, weight: 1}]", "mesh=auto"]


def _run(argv, env=None):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "TPU_")) and k not in ("XLA_FLAGS", "PYTHON")}
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**clean, "USER": "ada", **(env or {})})


def test_local_dry_run_prints_one_command_per_process():
    out = _run([sys.executable, "launch/local.py", "--processes", "3", "--devices_per_process", "2",
                "--port", "4321", "--dry-run", "--", *TRAIN])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words[:3])
        assert env["JAX_PLATFORMS"] == "cpu"
        assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
        assert env["PYTHONPATH"].split(os.pathsep)[0] == REPO
        assert words[3:] == [sys.executable, "-m", "jaxlm.main", "--coordinator=localhost:4321",
                             "--num_processes=3", f"--process_id={i}", *TRAIN]


def test_local_without_trainer_arguments_says_what_to_give():
    out = _run([sys.executable, "launch/local.py", "--dry-run"])
    assert out.returncode == 2
    assert "give the trainer's arguments after --" in out.stderr


def test_tpu_dry_run_all_prints_every_step():
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--type", "v4-32", "--zone", "us-central2-b",
                "--data", "data/demo", "all", "--", *TRAIN])
    assert out.returncode == 0, out.stderr
    ssh = "gcloud compute tpus tpu-vm ssh jaxlm-ada --worker=all --zone=us-central2-b"
    expected = [
        "gcloud compute tpus tpu-vm create jaxlm-ada --zone=us-central2-b --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base",
        f"git -C {REPO} archive --format=tar.gz -o /tmp/jaxlm-ada-jaxlm.tar.gz HEAD",
        "gcloud compute tpus tpu-vm scp /tmp/jaxlm-ada-jaxlm.tar.gz jaxlm-ada:jaxlm.tar.gz --worker=all "
        "--zone=us-central2-b",
        f"{ssh} '--command=mkdir -p ~/jaxlm && tar -xzf ~/jaxlm.tar.gz -C ~/jaxlm && python3 -m pip install "
        "-q -U '\\''jax[tpu]'\\'' -e ~/jaxlm'",
        f"{ssh} '--command=mkdir -p ~/jaxlm/data'",
        f"gcloud compute tpus tpu-vm scp --recurse {REPO}/data/demo jaxlm-ada:jaxlm/data/ --worker=all "
        "--zone=us-central2-b",
    ]
    lines = out.stdout.splitlines()
    assert lines[:6] == expected
    start, follow, delete = lines[6:]
    assert follow == ("gcloud compute tpus tpu-vm ssh jaxlm-ada --worker=0 --zone=us-central2-b '--command=tail "
                      "-n +1 --pid=$(cat ~/jaxlm-run.pid) -f ~/jaxlm-run.log; exit $(cat ~/jaxlm-run.status "
                      "2>/dev/null || echo 1)'")
    assert delete == "gcloud compute tpus tpu-vm delete jaxlm-ada --zone=us-central2-b --quiet"

    # The start command, read by a local shell and then by the worker's, runs the trainer with
    # exactly the arguments given, detached, its output and exit status in files.
    words = shlex.split(start)
    assert words[:8] == shlex.split(ssh)
    remote = words[8].removeprefix("--command=")
    assert remote.startswith("cd ~/jaxlm && rm -f ~/jaxlm-run.status && setsid nohup bash -c ")
    assert remote.endswith(" > ~/jaxlm-run.log 2>&1 < /dev/null & echo $! > ~/jaxlm-run.pid")
    remote_words = shlex.split(remote)
    job = remote_words[remote_words.index("-c") + 1]  # what `bash -c` runs
    lexer = shlex.shlex(job, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    assert list(lexer) == ["python3", "-m", "jaxlm.main", *TRAIN, ";", "echo", "$?", ">", "~/jaxlm-run.status"]


def test_tpu_queued_spot_resource_and_project():
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--queued", "--spot", "--name", "pod", "--zone", "z",
                "--type", "v5litepod-16", "--project", "p", "create"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "gcloud compute tpus queued-resources create pod --node-id=pod --zone=z --project=p "
        "--accelerator-type=v5litepod-16 --runtime-version=tpu-ubuntu2204-base --spot",
        "# then, every 60 s until it prints ACTIVE:",
        "gcloud compute tpus queued-resources describe pod --zone=z --project=p '--format=value(state.state)'",
    ]
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--queued", "--name", "pod", "--zone", "z", "delete"])
    assert out.stdout.strip() == "gcloud compute tpus queued-resources delete pod --zone=z --force --quiet"
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--name", "pod", "--zone", "z", "--worker", "3", "logs"])
    assert out.stdout.startswith("gcloud compute tpus tpu-vm ssh pod --worker=3 --zone=z '--command=tail")


@pytest.mark.parametrize("argv, message", [
    ([], "name a command"),
    (["run"], "give the trainer's arguments after --"),
    (["launch"], "unknown argument 'launch'"),
    (["--data", "../elsewhere", "install"], "--data must be a path inside the checkout"),
])
def test_tpu_bad_arguments_say_what_to_do(argv, message):
    out = _run(["bash", "launch/tpu.sh", "--dry-run", *argv])
    assert out.returncode == 2 and message in out.stderr


def test_slurm_dry_run_prints_the_submission_and_each_task():
    out = _run(["bash", "launch/slurm.sh", "--dry-run", "--nodes", "2", "--partition", "gpu", "--", *TRAIN])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --time=24:00:00 --partition=gpu "
        f"{LAUNCH}/slurm.sbatch --config configs/demo.yaml 'data.sources=[{{path: data/demo, weight: 1}}]' mesh=auto",
        "# each of the 16 tasks then runs:",
        "#   export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90",
        "#   export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
        "#   export NCCL_DEBUG=WARN",
        "#   export PYTHONUNBUFFERED=1",
        f"#   cd {REPO}",
        "#   srun --kill-on-bad-exit=1 --label python3 -m jaxlm.main --config configs/demo.yaml "
        "'data.sources=[{path: data/demo, weight: 1}]' mesh=auto",
    ]


def test_slurm_batch_script_runs_where_it_was_submitted():
    out = _run(["bash", "launch/slurm.sbatch", "--dry-run", "--config", "c.yaml"],
               env={"SLURM_SUBMIT_DIR": "/scratch/me/jaxlm", "PYTHON": "/opt/venv/bin/python"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2:] == [
        "cd /scratch/me/jaxlm", "srun --kill-on-bad-exit=1 --label /opt/venv/bin/python -m jaxlm.main --config c.yaml"]
    out = _run(["bash", "launch/slurm.sbatch"])
    assert out.returncode == 2 and "give the trainer's arguments" in out.stderr
    out = _run(["bash", "launch/slurm.sh", "--nodes", "0", "--", "--config", "c.yaml"])
    assert out.returncode == 2 and "positive integers" in out.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shell_scripts_pass_shellcheck():
    out = subprocess.run(["shellcheck", *SCRIPTS], cwd=LAUNCH, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
