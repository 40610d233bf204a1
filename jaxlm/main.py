"""Train a model: python -m jaxlm.main --config configs/X.yaml [key.path=value ...]

Every run writes into `workdir`: config.yaml (resolved), run.json, metrics.jsonl, tb/, and
checkpoints/. Overrides after the config file replace single keys, e.g. `optim.lr=3e-4`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

FLAGS = flags.DEFINE_string("config", None, "YAML config file (see configs/)")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs "
                             "outside Cloud TPU/SLURM (which are detected)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)")


def run(config_path: str, overrides: list[str]) -> dict:
    from jaxlm.config import load_config
    from jaxlm.train.loop import train

    config = load_config(config_path, overrides)
    return train(config)


def main(argv: list[str]) -> int:
    from jaxlm.config import ConfigError
    from jaxlm.data.format import DataFormatError
    from jaxlm.extras import MissingExtra
    from jaxlm.parallel import distributed
    from jaxlm.train.spikes import TrainingHalted

    logging.set_verbosity(logging.WARNING)  # JAX's platform probing is INFO noise for users
    if not FLAGS.value:
        print("error: --config is required, e.g. python -m jaxlm.main --config configs/demo.yaml", file=sys.stderr)
        return 2
    try:
        distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
        summary = run(FLAGS.value, argv[1:])
    except (ConfigError, DataFormatError, MissingExtra) as e:
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
    from jaxlm.parallel import distributed
    distributed.exit_process(main(argv))


if __name__ == "__main__":
    app.run(_main_and_exit)
