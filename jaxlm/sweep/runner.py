"""Running trials: one short training per trial, by subprocess here or as Ray tasks on a cluster.

A trial is the trainer's command line plus `key=value` overrides:
    <train_cmd> --config base.yaml key=value ... workdir=<sweep_dir>/<trial>
Its result is read back from `<trial>/metrics.jsonl`. A finished trial leaves `<trial>/trial.json`
(its result and command), so re-running a sweep skips what is done (an interrupted sweep resumes
where it stopped). A trial folder recorded with another command is refused rather than reused: the
trainer would resume its checkpoints under the new settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Optional

from jaxlm.sweep.space import SweepError, format_value

DEFAULT_TRAIN_CMD = f"{sys.executable} -m jaxlm.main"


@dataclasses.dataclass
class Trial:
    name: str
    overrides: dict[str, Any]  # the swept keys only
    group: str = ""  # ablation: the switch this trial belongs to


@dataclasses.dataclass
class TrialResult:
    name: str
    overrides: dict[str, Any]
    status: str  # ok | failed | no-metric
    metric: Optional[float]  # last value of the sweep's metric (default val_loss)
    loss: Optional[float]  # last training loss
    returncode: int
    seconds: float
    group: str = ""
    params: Optional[int] = None  # model parameters, from the run's run.json when it has them
    load: Optional[float] = None  # the machine's 1-minute load average when the trial started (timings' context)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What every trial shares."""

    base_config: str
    sweep_dir: str
    train_cmd: str = DEFAULT_TRAIN_CMD
    extra: tuple[str, ...] = ()  # overrides for every trial, e.g. train.steps=200
    workdir_key: str = "workdir"
    metric: str = "val_loss"
    timeout: Optional[float] = None  # seconds per trial

    def command(self, trial: Trial) -> list[str]:
        overrides = [f"{k}={format_value(v)}" for k, v in trial.overrides.items()]
        workdir = os.path.join(self.sweep_dir, trial.name)
        return (shlex.split(self.train_cmd) + ["--config", self.base_config] + list(self.extra)
                + overrides + [f"{self.workdir_key}={workdir}"])


def read_metrics(workdir: str, metric: str) -> tuple[Optional[float], Optional[float]]:
    """(last `metric` value, last training loss) from a run's metrics.jsonl; None where missing."""
    path = os.path.join(workdir, "metrics.jsonl")
    last_metric = last_loss = None
    if not os.path.isfile(path):
        return None, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed run
            if not isinstance(row, dict):
                continue
            for key, current in ((metric, "m"), ("loss", "l")):
                value = row.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    if current == "m":
                        last_metric = float(value)
                    else:
                        last_loss = float(value)
    return last_metric, last_loss


def read_params(workdir: str) -> Optional[int]:
    """`model_params` from the run's run.json (jaxlm.main writes it); None for other trainers."""
    try:
        with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
            params = json.load(f).get("model_params")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return params if isinstance(params, int) and not isinstance(params, bool) else None


def _read_record(workdir: str) -> Optional[dict]:
    path = os.path.join(workdir, "trial.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except json.JSONDecodeError:
        raise SweepError(f"{path} is not valid JSON; delete it to rerun that trial") from None
    if not isinstance(record, dict):
        raise SweepError(f"{path} is not a trial record; delete it to rerun that trial")
    return record


def check_resumable(trials: list[Trial], spec: RunSpec) -> None:
    """Refuses trial folders that a run with another command left (changed --set, grid values, ...)."""
    for trial in trials:
        workdir = os.path.join(spec.sweep_dir, trial.name)
        record = _read_record(workdir)
        if record is None:
            continue
        recorded = record.get("command")  # None in records from before commands were kept
        if record.get("overrides") != trial.overrides or (recorded is not None and recorded != spec.command(trial)):
            was = shlex.join(recorded) if recorded else record.get("overrides")
            raise SweepError(f"{workdir} holds a run of another command ({was}); its checkpoints would be "
                             "resumed with the new settings. Choose a new --out, or delete that folder")


def run_trial(trial: Trial, spec: RunSpec) -> TrialResult:
    """Runs one trial (or returns the recorded result of a finished one; see check_resumable)."""
    workdir = os.path.join(spec.sweep_dir, trial.name)
    record = os.path.join(workdir, "trial.json")
    done = _read_record(workdir)
    if done is not None and done.get("status") == "ok" and done.get("overrides") == trial.overrides:
        done.pop("command", None)
        return TrialResult(**{**done, "params": done.get("params") or read_params(workdir)})
    os.makedirs(workdir, exist_ok=True)
    load = os.getloadavg()[0]
    start = time.time()
    with open(os.path.join(workdir, "train.log"), "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run(spec.command(trial), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=spec.timeout, check=False)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = -9
        except FileNotFoundError as e:
            raise SweepError(f"cannot start the trainer {spec.train_cmd!r}: {e}") from None
    metric, loss = read_metrics(workdir, spec.metric)
    status = "failed" if returncode != 0 else ("ok" if metric is not None else "no-metric")
    result = TrialResult(trial.name, trial.overrides, status, metric, loss, returncode,
                         round(time.time() - start, 2), trial.group, read_params(workdir), round(load, 2))
    with open(record, "w", encoding="utf-8") as f:
        json.dump({**result.to_json(), "command": spec.command(trial)}, f, indent=1)
    return result


def run_local(trials: list[Trial], spec: RunSpec, log=print) -> list[TrialResult]:
    """One after another on this machine (each trial gets all its devices)."""
    results = []
    for i, trial in enumerate(trials, 1):
        result = run_trial(trial, spec)
        shown = "-" if result.metric is None else f"{result.metric:.4f}"
        log(f"[{i}/{len(trials)}] {trial.name} {trial.overrides}: {result.status}, {spec.metric} {shown} "
            f"({result.seconds:.0f} s)" + ("" if result.status == "ok" else f"; see {spec.sweep_dir}/{trial.name}/train.log"))
        results.append(result)
    return results


def run_ray(trials: list[Trial], spec: RunSpec, address: Optional[str] = None,
            resources: Optional[dict] = None, log=print) -> list[TrialResult]:
    """Each trial a Ray task (on a cluster at `address`, or a local Ray started here).

    The sweep directory must be on storage every node sees (the trials write their workdirs
    there). `resources` reserves e.g. {"num_gpus": 1} or {"resources": {"TPU": 4}} per trial.
    """
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray: pip install 'jaxlm[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(**(resources or {"num_cpus": 1}))(run_trial)
        pending = {task.remote(t, spec): t for t in trials}
        results = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            trial = pending.pop(done[0])
            result = ray.get(done[0])
            results[trial.name] = result
            log(f"[{len(results)}/{len(trials)}] {trial.name}: {result.status}, {spec.metric} {result.metric}")
        return [results[t.name] for t in trials]
    finally:
        if started_here:
            ray.shutdown()
