"""Train a model: python -m jaxlm.main --config configs/X.yaml [key.path=value ...]

Every run writes into `workdir`: config.yaml (resolved), run.json, metrics.jsonl, tb/, and
checkpoints/. Overrides after the config file replace single keys, e.g. `optim.lr=3e-4`.
"""

from __future__ import annotations

import argparse
import sys


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


def run(config_path: str, overrides: list[str]) -> dict:
    from jaxlm.config import load_config
    from jaxlm.train.loop import train

    config = load_config(config_path, overrides)
    return train(config)


def main(argv: list[str] | None = None) -> int:
    from absl import logging

    from jaxlm.config import ConfigError
    from jaxlm.data.format import DataFormatError
    from jaxlm.extras import MissingExtra
    from jaxlm.parallel import distributed
    from jaxlm.train.spikes import TrainingHalted

    args = _parser().parse_intermixed_args(argv)  # --help prints and exits 0; a usage error exits 2
    logging.set_verbosity(logging.WARNING)  # JAX's platform probing is INFO noise for users
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        summary = run(args.config, args.overrides)
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


if __name__ == "__main__":
    from jaxlm.parallel import distributed
    distributed.exit_process(main())
