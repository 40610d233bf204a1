"""Loss-spike drill: inject faults into Tiny Shakespeare runs and show what the spike handling does.

    python benchmarks/spike_drill.py [--data DIR] [--steps 2000] [--at 1000] [--workdir DIR] [--runs clean,nan,...]
    python benchmarks/spike_drill.py --overhead 300   # step time with spike handling on vs off

Without --data it prepares Tiny Shakespeare with data_prep (from ../shared/data) into the workdir.
Every run trains configs/shakespeare_char.yaml from scratch with checkpoints every 100 steps:
  clean       no fault: the false-alarm check (no skip, no rollback over the whole run)
  nan         NaN gradients at step --at: that update is skipped
  garbage     one batch of uniformly random tokens at --at: that update is skipped
  lr          learning rate x30 for 10 steps from --at: the loss climbs; roll back, skip the data, LR x0.5
  persistent  the lr fault (x1000) again after every rollback: the run stops after spikes.max_rollbacks
One row per run: the fault, the step it was detected at, the action, the steps lost (steps from the
checkpoint to the detection, per rollback, plus skipped updates that stayed skipped), and the final
validation loss against the clean run. Run it on an otherwise idle machine: a 2,000-step run takes
about a minute on 2 CPU cores. `--overhead N` instead trains N clean steps with spike handling on and
off (same config) and compares their steady tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlm.config import load_config  # noqa: E402
from jaxlm.train import spikes  # noqa: E402
from jaxlm.train.incidents import read_incidents  # noqa: E402
from jaxlm.train.loop import Trainer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def faults(name: str, at: int) -> list[dict]:
    return {
        "clean": [],
        "nan": [{"kind": "nan", "step": at}],
        "garbage": [{"kind": "garbage", "step": at}],
        "lr": [{"kind": "lr", "step": at, "steps": 10, "factor": 30.0}],
        "persistent": [{"kind": "lr", "step": at, "steps": 10, "factor": 1000.0, "persistent": True}],
    }[name]


def prepare(output: str) -> str:
    if not os.path.exists(os.path.join(output, "manifest.json")):
        subprocess.run([sys.executable, "-m", "data_prep", "--config", "data_prep/configs/shakespeare_char.yaml",
                        f"output={output}"], cwd=REPO, check=True)
    return output


def run(name: str, data: str, workdir: str, steps: int, at: int, extra: tuple = ()) -> dict:
    overrides = [
        f"workdir={workdir}", f"data.sources=[{{path: {data}}}]", f"train.steps={steps}",
        f"train.eval_every={steps}", "log.progress=false", "checkpoint.every_steps=100",
        "checkpoint.every_minutes=0", "checkpoint.handle_signals=false", f"faults={faults(name, at)}", *extra,
    ]
    config = load_config(os.path.join(REPO, "configs/shakespeare_char.yaml"), overrides)
    start = time.perf_counter()
    trainer = Trainer(config)
    halted, summary = None, {}
    try:
        summary = trainer.run()
    except spikes.TrainingHalted as e:
        halted = str(e).split(". ")[0]
    finally:
        trainer.close()
    return {"name": name, "summary": summary, "halted": halted, "seconds": time.perf_counter() - start,
            "incidents": read_incidents(workdir)}


def describe(result: dict, at: int) -> tuple[str, str, int]:
    """(detected at, action, steps lost) from the run's incidents."""
    incidents = result["incidents"]
    skips = [e for e in incidents if e["kind"] == "skip"]
    rollbacks = [e for e in incidents if e["kind"] == "rollback"]
    detected = str(min(e["step"] for e in skips)) if skips else "-"
    # Skips inside an abandoned stretch (after the checkpoint a rollback went back to) are part of
    # that rollback's loss; the others cost one step each.
    lost, surviving = 0, []
    for e in incidents:
        if e["kind"] == "skip":
            surviving.append(e["step"])
        elif e["kind"] == "rollback":
            lost += e["steps_lost"]
            surviving = [s for s in surviving if s <= e["to_step"]]
    lost += len(surviving)
    parts = []
    if rollbacks:
        targets = sorted({e["to_step"] for e in rollbacks})
        parts.append(f"{len(rollbacks)} rollback{'s' if len(rollbacks) > 1 else ''} to "
                     f"{','.join(map(str, targets))} ({sum(e['skipped_batches'] for e in rollbacks)} batches skipped)")
    if result["halted"]:
        parts.append(f"stopped at step {max(e['step'] for e in incidents if e['kind'] == 'halt')}")
    elif surviving:
        parts.append(f"{len(surviving)} update{'s' if len(surviving) > 1 else ''} skipped")
    return detected, "; ".join(parts) or "none", lost


def overhead(data: str, root: str, steps: int, rounds: int = 2) -> None:
    """Alternates on/off runs and keeps each setting's best median, so a busy machine hurts both alike."""
    rates = {False: 0.0, True: 0.0}
    for r in range(rounds):
        for enabled in (False, True):
            workdir = os.path.join(root, f"overhead_{'on' if enabled else 'off'}_{r}")
            run("clean", data, workdir, steps, steps, (f"spikes.enabled={str(enabled).lower()}",
                                                        "train.log_every=25", "train.eval_every=0"))
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                rows = [row for row in map(json.loads, f) if "tokens_per_sec" in row]
            rates[enabled] = max(rates[enabled], statistics.median(row["tokens_per_sec"] for row in rows[1:]))
    print(f"\nStep throughput, Tiny Shakespeare, {steps} steps, best of {rounds} runs of the median tokens/s "
          "over logged windows")
    print(f"{'spike handling':<16} {'tokens/s':>10} {'ratio':>7}")
    for enabled in (False, True):
        print(f"{'on' if enabled else 'off':<16} {rates[enabled]:>10.0f} {rates[enabled] / rates[False]:>7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a prepared Tiny Shakespeare folder (default: prepare one in the workdir)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--at", type=int, default=None, help="step the faults hit (default: half way)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--runs", default="clean,nan,garbage,lr,persistent")
    parser.add_argument("--overhead", type=int, default=0, metavar="STEPS",
                        help="only compare step throughput with spike handling on and off")
    args = parser.parse_args()
    at = args.at or args.steps // 2
    root = args.workdir or tempfile.mkdtemp(prefix="spike_drill_")
    data = args.data or prepare(os.path.join(root, "data"))
    if args.overhead:
        overhead(data, root, args.overhead)
        return 0
    names = args.runs.split(",")
    if "clean" not in names:
        names.insert(0, "clean")

    results = []
    for name in names:
        print(f"[{name}] training {args.steps} steps ...", file=sys.stderr, flush=True)
        results.append(run(name, data, os.path.join(root, name), args.steps, at))
    clean = results[names.index("clean")]["summary"].get("val_loss")

    print(f"\nLoss-spike drill: Tiny Shakespeare, {args.steps} steps, faults at step {at}; workdirs in {root}")
    header = f"{'fault':<11} {'injected':<34} {'detected at':>11}  {'action':<50} {'steps lost':>10}  {'final val loss (vs clean)':<26} {'time':>6}"
    print(header)
    print("-" * len(header))
    for result in results:
        fault = faults(result["name"], at)
        injected = "-" if not fault else ", ".join(
            f"{f['kind']}{' x' + str(int(f['factor'])) if f['kind'] == 'lr' else ''} at {f['step']}"
            f"{'+' + str(f['steps'] - 1) if f.get('steps', 1) > 1 else ''}{' persistent' if f.get('persistent') else ''}"
            for f in fault)
        detected, action, lost = describe(result, at)
        val = result["summary"].get("val_loss")
        versus = "-" if val is None else f"{val:.4f} ({100 * (val / clean - 1):+.2f}%)" if clean else f"{val:.4f}"
        print(f"{result['name']:<11} {injected:<34} {detected:>11}  {action:<50} {lost:>10}  {versus:<26} {result['seconds']:>5.0f}s")
    clean_alarms = [e for e in results[names.index("clean")]["incidents"] if e["kind"] in ("skip", "spike", "rollback")]
    print(f"\nclean run: {len(clean_alarms)} false alarms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
