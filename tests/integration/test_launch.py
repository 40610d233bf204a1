"""The launch scripts: the exact commands their --dry-run prints, their errors, and shellcheck."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

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
                "--data", "data/demo", "--workdir", "gs://b/run", "all", "--", *TRAIN])
    assert out.returncode == 0, out.stderr
    ssh = "gcloud compute tpus tpu-vm ssh jaxlm-ada --worker=all --zone=us-central2-b"
    expected = [
        "# first, the workdir's bucket must exist (else: stop, before any TPU is created):",
        "gcloud storage buckets describe gs://b '--format=value(name)'",
        "gcloud compute tpus tpu-vm create jaxlm-ada --zone=us-central2-b --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base",
        f"git -C {REPO} archive --format=tar.gz -o /tmp/jaxlm-ada-jaxlm.tar.gz HEAD",
        "gcloud compute tpus tpu-vm scp /tmp/jaxlm-ada-jaxlm.tar.gz jaxlm-ada:jaxlm.tar.gz --worker=all "
        "--zone=us-central2-b",
        f"{ssh} '--command=mkdir -p ~/jaxlm && tar -xzf ~/jaxlm.tar.gz -C ~/jaxlm && python3 -m pip install "
        "-q -U -e ~/jaxlm'\\''[tpu]'\\'''",
        f"{ssh} '--command=mkdir -p ~/jaxlm/data'",
        f"gcloud compute tpus tpu-vm scp --recurse {REPO}/data/demo jaxlm-ada:jaxlm/data/ --worker=all "
        "--zone=us-central2-b",
    ]
    lines = out.stdout.splitlines()
    assert lines[:8] == expected
    start, follow = lines[8:10]
    assert follow == ("gcloud compute tpus tpu-vm ssh jaxlm-ada --worker=0 --zone=us-central2-b '--command=tail "
                      "-n +1 --pid=$(cat ~/jaxlm-run.pid) -f ~/jaxlm-run.log; exit $(cat ~/jaxlm-run.status "
                      "2>/dev/null || echo 1)'")
    # Without --delete nothing deletes the TPU but the re-creation of a preempted slice.
    deletes = [i for i, line in enumerate(lines) if line.startswith("gcloud") and " delete " in line]
    assert len(deletes) == 1 and lines[deletes[0] - 1].startswith("# re-create it")
    assert "PREEMPTED" in lines[deletes[0] - 3]
    assert lines[-1].startswith("# jaxlm-ada is kept (pass --delete")

    # The start command, read by a local shell and then by the worker's, runs the trainer with
    # exactly the arguments given (and the workdir), detached, its output and exit status in files,
    # the success marker only when it exits 0.
    words = shlex.split(start)
    assert words[:8] == shlex.split(ssh)
    remote = words[8].removeprefix("--command=")
    assert remote.startswith("cd ~/jaxlm && rm -f ~/jaxlm-run.status ~/jaxlm-run.succeeded && setsid nohup bash -c ")
    assert remote.endswith(" > ~/jaxlm-run.log 2>&1 < /dev/null & echo $! > ~/jaxlm-run.pid")
    remote_words = shlex.split(remote)
    job = remote_words[remote_words.index("-c") + 1]  # what `bash -c` runs
    lexer = shlex.shlex(job, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    assert list(lexer) == ["python3", "-m", "jaxlm.main", *TRAIN, "workdir=gs://b/run", ";", "s=$?", ";", "echo",
                           "$s", ">", "~/jaxlm-run.status", ";", "[", "$s", "-ne", "0", "]", "||", "touch",
                           "~/jaxlm-run.succeeded"]


def test_tpu_deletes_only_when_asked_and_after_the_success_marker():
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--queued", "--spot", "--type", "v5p-64", "--workdir",
                "gs://bucket/runs/a", "--delete", "all", "--", *TRAIN])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    marker = ("gcloud compute tpus tpu-vm ssh jaxlm-ada --worker=0 --zone=us-central2-b "
              "'--command=test -f ~/jaxlm-run.succeeded'")
    qr_delete = "gcloud compute tpus queued-resources delete jaxlm-ada --zone=us-central2-b --force --quiet"
    assert lines[-3:] == ["# deleting only if the run's success marker is on worker 0:", marker, qr_delete]
    # the queued resource is re-created after a preemption, then the run started again
    i = lines.index("# re-create it and resume the run from its checkpoints (at most 20 times):")
    assert lines[i + 1] == qr_delete
    assert lines[i + 2] == ("gcloud compute tpus queued-resources create jaxlm-ada --node-id=jaxlm-ada "
                            "--zone=us-central2-b --accelerator-type=v5p-64 --runtime-version=tpu-ubuntu2204-base "
                            "--spot")
    assert "setsid nohup" in lines[i + 8] and "workdir=gs://bucket/runs/a" in lines[i + 8]
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--name", "pod", "--zone", "z", "delete"])
    assert out.stdout.splitlines()[1:] == [
        "gcloud compute tpus tpu-vm ssh pod --worker=0 --zone=z '--command=test -f ~/jaxlm-run.succeeded'",
        "gcloud compute tpus tpu-vm delete pod --zone=z --quiet"]
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--name", "pod", "--zone", "z", "--force", "delete"])
    assert out.stdout.splitlines() == ["gcloud compute tpus tpu-vm delete pod --zone=z --quiet"]


@pytest.mark.parametrize("tpu_type, hosts", [("v4-16", 2), ("v5p-128", 16), ("v5litepod-16", 4), ("v6e-32", 8)])
def test_tpu_multi_host_needs_a_shared_workdir(tpu_type, hosts):
    base = ["bash", "launch/tpu.sh", "--dry-run", "--type", tpu_type]
    for workdir in ([], ["--workdir", "runs/local"]):
        out = _run(base + workdir + ["all", "--", *TRAIN])
        assert out.returncode == 2
        assert f"{tpu_type} has {hosts} hosts" in out.stderr and "--workdir gs://BUCKET/PATH" in out.stderr
        assert "Give --bucket BUCKET (the workdir is then gs://BUCKET/runs/jaxlm-ada)" in out.stderr
    assert _run(base + ["--workdir", "gs://b/r", "run", "--", *TRAIN]).returncode == 0
    assert _run(base + ["--workdir", "/mnt/filestore/r", "--shared-fs", "run", "--", *TRAIN]).returncode == 0


def test_tpu_workdir_defaults_to_the_bucket_and_a_missing_bucket_stops_before_any_tpu(tmp_path):
    # --bucket (or $JAXLM_BUCKET): the workdir is gs://BUCKET/runs/NAME, also on a multi-host slice
    for args, env in ((["--bucket", "gs://team-bkt/"], {}), ([], {"JAXLM_BUCKET": "team-bkt"})):
        out = _run(["bash", "launch/tpu.sh", "--dry-run", "--type", "v5p-64", *args, "all", "--", *TRAIN], env=env)
        assert out.returncode == 0, out.stderr
        assert "workdir=gs://team-bkt/runs/jaxlm-ada" in out.stdout
        assert "gcloud storage buckets describe gs://team-bkt '--format=value(name)'" in out.stdout.splitlines()[1]
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--bucket", "xyz", "--workdir", "gs://b/r", "run", "--", *TRAIN])
    assert "workdir=gs://b/r" in out.stdout and "gs://xyz" not in out.stdout  # --workdir wins
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--bucket", "My_Bucket!", "run", "--", *TRAIN])
    assert out.returncode == 2 and "is not a bucket name" in out.stderr

    # A bucket that is not there: one message, and nothing created
    env = _stand_ins(tmp_path, {"gcloud": 'case "$*" in *"buckets describe"*) exit 1 ;; *) exit 0 ;; esac'})
    out = _run(["bash", "launch/tpu.sh", "--type", "v4-32", "--bucket", "gone", "all", "--", *TRAIN], env=env)
    assert out.returncode == 2
    assert ("error: bucket gs://gone (of the workdir gs://gone/runs/jaxlm-ada) does not exist or these credentials "
            "cannot read it; create it (gcloud storage buckets create gs://gone") in out.stderr
    assert (tmp_path / "calls.log").read_text().splitlines() == [
        "gcloud storage buckets describe gs://gone --format=value(name)"]


def test_tpu_single_host_may_keep_a_local_workdir_and_bad_paths_are_refused():
    for tpu_type in ("v4-8", "v5p-8", "v5litepod-8", "v6e-8"):
        out = _run(["bash", "launch/tpu.sh", "--dry-run", "--type", tpu_type, "run", "--", *TRAIN])
        assert out.returncode == 0, out.stderr
    # --data reaches remote shells: anything a shell would read as more than a path is refused
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--data", "data/web;rm -rf ~", "install"])
    assert out.returncode == 2 and "letters, digits and . _ - / only" in out.stderr
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "run", "--", *TRAIN, "workdir=x"])
    assert out.returncode == 2 and "give the workdir as --workdir" in out.stderr


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
    out = _run(["bash", "launch/tpu.sh", "--dry-run", "--queued", "--name", "pod", "--zone", "z", "--force", "delete"])
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
        "#   # exit status 143 (saved after SIGTERM, not finished): requeue this job, which resumes",
        "#   scontrol requeue $SLURM_JOB_ID",
    ]


def test_slurm_batch_script_runs_where_it_was_submitted():
    out = _run(["bash", "launch/slurm.sbatch", "--dry-run", "--config", "c.yaml"],
               env={"SLURM_SUBMIT_DIR": "/scratch/me/jaxlm", "PYTHON": "/opt/venv/bin/python"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-4:-2] == [
        "cd /scratch/me/jaxlm", "srun --kill-on-bad-exit=1 --label /opt/venv/bin/python -m jaxlm.main --config c.yaml"]
    out = _run(["bash", "launch/slurm.sbatch"])
    assert out.returncode == 2 and "give the trainer's arguments" in out.stderr
    out = _run(["bash", "launch/slurm.sh", "--nodes", "0", "--", "--config", "c.yaml"])
    assert out.returncode == 2 and "positive integers" in out.stderr


def _stand_ins(tmp_path, scripts: dict) -> dict:
    """A PATH where `scripts` ({name: bash body}) stand in for cluster commands (srun, gcloud, ...)
    that cannot run here; each records its arguments in calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> {tmp_path}/calls.log\n{body}\n')
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("trainer_status, requeued", [(143, True), (0, False), (1, False)])
def test_slurm_job_requeues_itself_only_after_a_checkpoint_on_sigterm(tmp_path, trainer_status, requeued):
    header = open(os.path.join(LAUNCH, "slurm.sbatch")).read()
    assert "#SBATCH --requeue\n" in header and "#SBATCH --signal=TERM@300\n" in header
    env = _stand_ins(tmp_path, {"srun": f"exit {trainer_status}", "scontrol": "exit 0"})
    out = _run(["bash", "launch/slurm.sbatch", "--config", "c.yaml"],
               env={**env, "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(tmp_path)})
    assert out.returncode == trainer_status
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0] == "srun --kill-on-bad-exit=1 --label python3 -m jaxlm.main --config c.yaml"
    assert calls[1:] == (["scontrol requeue 4242"] if requeued else [])


# A stand-in gcloud for the follow loop: each kind of call answers from its own queue of replies
# (one per line: an exit status, or for `describe` the state printed), so a test scripts a dropped
# ssh session, a preemption, a failure.
FAKE_GCLOUD = r"""
pop() { local f="$STATE/$1"; [[ -s "$f" ]] || { echo 0; return; }; head -n 1 "$f"; sed -i 1d "$f"; }
case "$*" in
  *"--command=tail"*) exit "$(pop logs)" ;;
  *"--command=test -f"*) exit "$(pop success)" ;;
  *"--command=kill -0"*) exit "$(pop running)" ;;
  *" describe "*) pop states ;;
  *) exit 0 ;;
esac
"""


def _follow(tmp_path, replies: dict, *argv):
    state = tmp_path / "state"
    state.mkdir()
    for name, lines in replies.items():
        (state / name).write_text("".join(f"{x}\n" for x in lines))
    env = {**_stand_ins(tmp_path, {"gcloud": FAKE_GCLOUD, "git": "exit 0", "sleep": "exit 0"}), "STATE": str(state)}
    out = _run(["bash", "launch/tpu.sh", "--name", "pod", "--zone", "z", *argv, "--", *TRAIN], env=env)
    calls = [c.removeprefix("gcloud compute tpus ") for c in (tmp_path / "calls.log").read_text().splitlines()
             if c.startswith("gcloud")]
    return out, calls


def _kinds(calls):
    return [c.split(" --command=")[-1].split()[0] if " ssh " in c else " ".join(c.split()[:2]) for c in calls]


def test_tpu_run_reattaches_after_a_dropped_session_and_deletes_only_after_success(tmp_path):
    # the ssh stream drops (255) while the run goes on; the second stream ends with success
    out, calls = _follow(tmp_path, {"logs": [255, 0], "success": [1, 0, 0], "states": ["READY"], "running": [0]},
                         "--delete", "all")
    assert out.returncode == 0, out.stderr
    assert "following it again" in out.stderr
    assert _kinds(calls) == ["tpu-vm create", "tpu-vm scp", "mkdir", "cd", "tail", "test", "tpu-vm describe",
                             "kill", "tail", "test", "test", "tpu-vm delete"]


def test_tpu_run_that_fails_keeps_the_tpu(tmp_path):
    out, calls = _follow(tmp_path, {"logs": [1], "success": [1], "states": ["READY"], "running": [1]},
                         "--delete", "all")
    assert out.returncode == 2 and "ended without success" in out.stderr and "the TPU is kept" in out.stderr
    assert not any(" delete " in c for c in calls)



def test_tpu_state_without_an_answer_is_never_taken_for_a_preemption(tmp_path):
    # describe prints nothing once (an API hiccup): look again later, delete nothing on a guess
    out, calls = _follow(tmp_path, {"logs": [255, 0], "success": [1, 0, 0], "states": ["", "READY"], "running": [0]},
                         "--delete", "all")
    assert out.returncode == 0, out.stderr
    assert [c for c in calls if " delete " in c] == ["tpu-vm delete pod --zone=z --quiet"]
    assert _kinds(calls)[-2:] == ["test", "tpu-vm delete"]


def test_tpu_preempted_queued_resource_is_recreated_and_the_run_resumes(tmp_path):
    out, calls = _follow(tmp_path, {"logs": [255, 0], "success": [1, 0], "states": ["ACTIVE", "SUSPENDED", "ACTIVE"]},
                         "--queued", "--spot", "all")
    assert out.returncode == 0, out.stderr
    assert "re-creating it (1 of at most 20)" in out.stderr
    assert _kinds(calls) == [
        "queued-resources create", "queued-resources describe", "tpu-vm scp", "mkdir", "cd", "tail", "test",
        "queued-resources describe",  # SUSPENDED: capacity taken
        "queued-resources delete", "queued-resources create", "queued-resources describe", "tpu-vm scp", "mkdir",
        "cd", "tail", "test"]  # the run started again (it resumes from its checkpoints) and succeeded
    assert "queued-resources delete pod --zone=z --force --quiet" in calls  # the suspended one, to re-create it
    assert sum(" delete " in c for c in calls) == 1  # kept after success: no --delete


def test_shell_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing; .ci/run installs it (apt-get install shellcheck)")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    out = subprocess.run(["shellcheck", *SCRIPTS], cwd=LAUNCH, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
