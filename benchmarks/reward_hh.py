"""A reward model on Anthropic HH-RLHF (harmless-base), end to end: the pairs through data_prep, the
Bradley-Terry run (configs/reward_hh.yaml), then its accuracy on the held-out pairs.

  python benchmarks/reward_hh.py [--config configs/reward_hh.yaml] [--pairs-config data_prep/configs/pref_hh.yaml]

Needs ../shared/data/pref/hh-rlhf (not shipped with jaxlm; see its MANIFEST.md). Each step is skipped
when its output exists (delete data/pref_hh or the run's workdir to redo it). Prints the held-out
pair accuracy with its binomial standard error against chance (0.5), the mean score margin, and the
run's own validation loss and accuracy at each evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from jaxlm.config import load_config
from jaxlm.eval.loading import load_workdir
from jaxlm.eval.pairs import reward_accuracy
from preference_arith import run  # one step as a subprocess, timed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/reward_hh.yaml")
    p.add_argument("--pairs-config", default="data_prep/configs/pref_hh.yaml")
    args = p.parse_args()
    config = load_config(args.config)
    pairs = config.data.sources[0].path
    if not os.path.isfile(os.path.join(pairs, "manifest.json")):
        run([sys.executable, "-m", "data_prep", "--config", args.pairs_config])
    if not os.path.isdir(os.path.join(config.workdir, "checkpoints")):
        run([sys.executable, "-m", "jaxlm.main", "--config", args.config, "log.progress=false"])

    with open(os.path.join(config.workdir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print("\nthe run's evaluations (its validation pairs):")
    for r in rows:
        if "val_loss" in r:
            print(f"  step {r['step']:>4}: val loss {r['val_loss']:.4f}, accuracy {r.get('val_accuracy', float('nan')):.3f}")
    rm = reward_accuracy(load_workdir(config.workdir), pairs)
    stderr = math.sqrt(0.25 / rm["count"])  # under chance: accuracy 0.5
    print(f"\nreward model ({config.workdir}, {config.train.steps} steps): held-out pair accuracy {rm['accuracy']:.4f} on "
          f"{rm['count']} pairs ({(rm['accuracy'] - 0.5) / stderr:+.1f} standard errors from chance 0.5; {rm['ties']} ties), "
          f"mean score margin {rm['score_margin']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
