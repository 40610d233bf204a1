"""Train a model: python -m jaxlm.main --config configs/X.yaml [key.path=value ...]

Every run writes into `workdir`: config.yaml (resolved), run.json, metrics.jsonl, tb/, and
checkpoints/. Overrides after the config file replace single keys, e.g. `optim.lr=3e-4`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from jaxlm.config import ConfigError, load_config
from jaxlm.data.format import DataFormatError
from jaxlm.eval import run_tasks, scalars
from jaxlm.parallel import distributed, rules
from jaxlm.plan import auto
from jaxlm.train import loop
from jaxlm.train.loop import Hook
from jaxlm.train.spikes import TrainingHalted

FLAGS = flags.DEFINE_string("config", None, "YAML config file (see configs/)")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs "
                             "outside Cloud TPU/SLURM (which are detected)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)")


def eval_tasks_hook(config):
    """The n-shot tasks of train.eval_tasks every train.eval_tasks_every steps (a loop hook), their
    scores written to metrics.jsonl and TensorBoard; None when the config asks for none."""
    t = config.train
    if not (t.eval_tasks and t.eval_tasks_every):
        return None

    def run_eval_tasks(trainer, step: int) -> None:
        with rules.activation_sharding(trainer.mesh):  # the model's activations on the run's mesh
            result = run_tasks(trainer.state["params"], trainer.config, t.eval_tasks, shots=t.eval_tasks_shots,
                               limit=t.eval_tasks_limit, data_root=t.eval_tasks_data or None)
        if trainer.is_main:
            trainer.writer.write(step, scalars(result))

    return Hook("eval_tasks", t.eval_tasks_every, run_eval_tasks)


def train(config) -> dict:
    """jaxlm.train.loop.train with the hooks this entry point registers (the n-shot tasks)."""
    hooks = [h for h in [eval_tasks_hook(config)] if h is not None]
    return loop.train(config, hooks)


def run(config_path: str, overrides: list[str]) -> dict:
    config = auto.resolve_mesh(load_config(config_path, overrides))  # `mesh: auto` -> sizes
    return train(config)


def main(argv: list[str]) -> int:
    logging.set_verbosity(logging.WARNING)  # JAX's platform probing is INFO noise for users
    if not FLAGS.value:
        print("error: --config is required, e.g. python -m jaxlm.main --config configs/demo.yaml", file=sys.stderr)
        return 2
    try:
        distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
        summary = run(FLAGS.value, argv[1:])
    except (ConfigError, DataFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingHalted as e:  # loss spikes persisted past spikes.max_rollbacks
        print(f"error: {e}", file=sys.stderr)
        return 3
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()
             if k in ("step", "loss", "val_loss", "tokens_per_sec", "mfu")}
    print(f"done: {shown}")
    return 0


def _main_and_exit(argv: list[str]) -> None:
    distributed.exit_process(main(argv))


if __name__ == "__main__":
    app.run(_main_and_exit)
