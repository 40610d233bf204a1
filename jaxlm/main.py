"""Train a model: python -m jaxlm.main --config configs/X.yaml [key.path=value ...]

Every run writes into `workdir`: config.yaml (resolved), run.json, metrics.jsonl, tb/, and
checkpoints/. Overrides after the config file replace single keys, e.g. `optim.lr=3e-4`.
"""

from __future__ import annotations

import argparse
import sys

from absl import logging

from jaxlm.config import ConfigError, load_config
from jaxlm.data.format import DataFormatError
from jaxlm.eval import run_tasks, scalars
from jaxlm.extras import MissingExtra
from jaxlm.interop import InteropError, warm_start
from jaxlm.parallel import distributed, rules
from jaxlm.plan import auto
from jaxlm.rl import Rollouts
from jaxlm.train import loop
from jaxlm.train.loop import Hook
from jaxlm.train.spikes import TrainingHalted


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxlm.main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="replace single config keys")
    p.add_argument("--coordinator", help="host:port of process 0, for multi-process runs outside Cloud "
                   "TPU/SLURM (which are detected)")
    p.add_argument("--num_processes", "--num-processes", type=int, help="number of processes (with --coordinator)")
    p.add_argument("--process_id", "--process-id", type=int, help="this process's index (with --coordinator)")
    return p


def eval_tasks_hook(config):
    """The n-shot tasks of train.eval_tasks every train.eval_tasks_every steps (a loop hook), their
    scores written to metrics.jsonl and TensorBoard; None when the config asks for none."""
    t = config.train
    if not (t.eval_tasks and t.eval_tasks_every):
        return None

    def run_eval_tasks(trainer, step: int) -> None:
        with rules.activation_sharding(trainer.mesh):  # the model's activations on the run's mesh
            result = run_tasks(trainer.eval_params(), trainer.config, t.eval_tasks, shots=t.eval_tasks_shots,
                               limit=t.eval_tasks_limit, data_root=t.eval_tasks_data or None)
        if trainer.is_main:
            trainer.writer.write(step, scalars(result))

    return Hook("eval_tasks", t.eval_tasks_every, run_eval_tasks)


def train(config) -> dict:
    """jaxlm.train.loop.train with the hooks this entry point registers (the n-shot tasks), and for
    online RL (rl.algorithm) the rollout stage that makes its batches."""
    hooks = [h for h in [eval_tasks_hook(config)] if h is not None]
    rollouts = Rollouts(config) if config.rl.algorithm else None  # online RL: batches made by generation
    return loop.train(config, hooks, init_params=lambda: warm_start.initial_params(config), rollouts=rollouts)


def run(config_path: str, overrides: list[str]) -> dict:
    config = auto.resolve_mesh(load_config(config_path, overrides))  # `mesh: auto` -> sizes
    return train(config)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)  # --help prints and exits 0; a usage error exits 2
    logging.set_verbosity(logging.WARNING)  # JAX's platform probing is INFO noise for users
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        summary = run(args.config, args.overrides)
    except (ConfigError, DataFormatError, MissingExtra, InteropError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingHalted as e:  # loss spikes persisted past spikes.max_rollbacks
        print(f"error: {e}", file=sys.stderr)
        return 3
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()
             if k in ("step", "loss", "val_loss", "tokens_per_sec", "mfu")}
    print(f"done: {shown}")
    return 0


if __name__ == "__main__":
    distributed.exit_process(main())
