"""python -m jaxlm.sweep: grid / random search and ablations, each trial a short training run.

  python -m jaxlm.sweep --config configs/demo.yaml --grid optim.lr=1e-3,3e-3,1e-2,3e-2 --set train.steps=300
  python -m jaxlm.sweep --config configs/demo.yaml --random 8 --space optim.lr=loguniform:1e-4:1e-2 \\
      --space model.d_model=choice:128,256
  python -m jaxlm.sweep --config configs/demo.yaml --ablate gpt2_block --ablate untied --seeds 0,1
  ... --ray [--ray-address auto]        # trials as tasks on a Ray cluster

Writes <out>/<trial>/ (each run's workdir), results.md, results.jsonl, tb/ (TensorBoard HParams)
and best.yaml (the base config with the best trial's values); ablations also write ablation.md.
Re-running skips finished trials, and refuses trial folders that another command left.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from jaxlm.config import ConfigError, load_config
from jaxlm.sweep.ablation import SWITCHES, ablation_table, ablation_trials, parse_switches
from jaxlm.sweep.report import markdown_table, write_report
from jaxlm.sweep.runner import DEFAULT_TRAIN_CMD, RunSpec, Trial, check_resumable, run_local, run_ray
from jaxlm.sweep.space import SweepError, format_value, grid_trials, parse_grid, parse_space, random_trials


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxlm.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the base training config (YAML)")
    mode = p.add_argument_group("what to search (one mode)")
    mode.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                      help="grid over a config key; repeat for a product grid")
    mode.add_argument("--random", type=int, metavar="N", help="N random trials drawn from --space")
    mode.add_argument("--space", action="append", default=[], metavar="KEY=KIND:ARGS",
                      help="uniform:lo:hi | loguniform:lo:hi | int:lo:hi | choice:a,b,c")
    mode.add_argument("--ablate", action="append", default=[], metavar="SWITCH",
                      help=f"ablation switch: {', '.join(SWITCHES)}")
    mode.add_argument("--switch", action="append", default=[], metavar="NAME:KEY=V[;KEY=V]",
                      help="your own ablation switch")
    p.add_argument("--seeds", help="ablation: comma-separated seeds, each run for every switch")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every trial (e.g. --set train.steps=200 train.eval_every=200)")
    p.add_argument("--out", help="sweep directory (default runs/sweep-<config name>)")
    p.add_argument("--metric", default="val_loss", help="metrics.jsonl field to minimise (default val_loss)")
    p.add_argument("--train-cmd", default=DEFAULT_TRAIN_CMD,
                   help="the trainer command; it gets --config FILE key=value ... workdir=DIR")
    p.add_argument("--workdir-key", default="workdir", help="config key of the run directory")
    p.add_argument("--timeout", type=float, help="seconds per trial before it is killed")
    p.add_argument("--seed", type=int, default=0, help="random search: sampling seed")
    p.add_argument("--ray", action="store_true", help="run trials as Ray tasks")
    p.add_argument("--ray-address", help="Ray cluster address (default: start Ray here)")
    return p


def make_trials(args) -> tuple[str, list[Trial], Optional[dict]]:
    modes = [bool(args.grid), args.random is not None, bool(args.ablate or args.switch)]
    if sum(modes) != 1:
        raise SweepError("choose one mode: --grid KEY=V1,V2 ..., --random N --space ..., or --ablate SWITCH")
    if args.grid:
        trials = grid_trials(parse_grid(args.grid))
        return "grid", [Trial(f"trial-{i:03d}", t) for i, t in enumerate(trials)], None
    if args.random is not None:
        if args.random <= 0 or not args.space:
            raise SweepError("--random N needs N > 0 and at least one --space KEY=KIND:ARGS")
        trials = random_trials(parse_space(args.space), args.random, args.seed)
        return "random", [Trial(f"trial-{i:03d}", t) for i, t in enumerate(trials)], None
    switches = parse_switches(args.ablate, args.switch)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    except ValueError:
        raise SweepError(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    return "ablation", ablation_trials(switches, seeds), switches


def check_trial_configs(spec: RunSpec, trials: list[Trial]) -> None:
    """Loads every trial's config as jaxlm.main will, so a misspelt key or a bad value stops the
    sweep before the first run instead of failing every trial."""

    for trial in trials:
        overrides = list(spec.extra) + [f"{k}={format_value(v)}" for k, v in trial.overrides.items()]
        try:
            load_config(spec.base_config, overrides)
        except ConfigError as e:
            raise SweepError(f"trial {trial.name} {trial.overrides or ''}: {e}") from None


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not os.path.isfile(args.config):
            raise SweepError(f"config {args.config!r} does not exist")
        for item in args.set:
            if "=" not in item or not item.partition("=")[0].strip():
                raise SweepError(f"--set {item!r} must look like key.path=value, e.g. --set train.steps=200")
        mode, trials, _ = make_trials(args)
        out = args.out or os.path.join("runs", "sweep-" + os.path.splitext(os.path.basename(args.config))[0])
        spec = RunSpec(os.path.abspath(args.config), os.path.abspath(out), args.train_cmd, tuple(args.set),
                       args.workdir_key, args.metric, args.timeout)
        if args.train_cmd == DEFAULT_TRAIN_CMD:
            check_trial_configs(spec, trials)
        check_resumable(trials, spec)
        print(f"{mode}: {len(trials)} trials into {out}")
        results = (run_ray(trials, spec, args.ray_address) if args.ray else run_local(trials, spec))
        best = write_report(results, spec.sweep_dir, args.config, args.set, args.metric, title=f"{mode} sweep")
        print(markdown_table(results, args.metric))
        if mode == "ablation":
            text = ablation_table(results, args.metric)
            with open(os.path.join(spec.sweep_dir, "ablation.md"), "w", encoding="utf-8") as f:
                f.write(f"# ablation\n\nbase config: `{args.config}`; for every trial: "
                        f"`{' '.join(args.set) or '(nothing)'}`\n\n{text}\n")
            print(text)
        if best is None:
            print(f"error: no trial produced {args.metric!r}; see the train.log files in {out}", file=sys.stderr)
            return 1
        print(f"best: {best.name} {best.overrides} {args.metric} {best.metric:.4f} -> {out}/best.yaml")
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
