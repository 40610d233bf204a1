"""Char-level Tiny Shakespeare race: wall time to a validation loss, against the small baseline.

    python benchmarks/shakespeare_race.py [--data data/shakespeare_char] [--workdir runs/race]

The recipe is the well-known small char-level baseline's (configs/shakespeare_char.yaml: 4 layers,
4 heads, 128 wide, context 64, batch 12, 2,000 steps, lr 1e-3, 100 warm-up steps, cosine to 1e-4,
no dropout, gpt2 family), evaluated every 250 steps on 20 batches. The wall time is the whole
`python -m jaxlm.main` process: start-up, compilation and evaluations included. The reference row
is that recipe in the PyTorch reference trainer on the same 2-core machine (figures quoted in the
issue, not re-run here: 1.886 in 102 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = {"val_loss": 1.886, "wall_s": 102.0}
TARGET = {"val_loss": 1.89, "wall_s": 50.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO, "data", "shakespeare_char"))
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "shakespeare_race"))
    parser.add_argument("overrides", nargs="*", help="extra key.path=value overrides for the trainer")
    args = parser.parse_args()

    if not os.path.isfile(os.path.join(args.data, "manifest.json")):
        subprocess.run([sys.executable, "-m", "data_prep", "--config",
                        os.path.join(REPO, "data_prep", "configs", "shakespeare_char.yaml"), f"output={args.data}"],
                       cwd=REPO, check=True)
    if os.path.exists(args.workdir):
        import shutil
        shutil.rmtree(args.workdir)  # a fresh run: no resume from an earlier race
    command = [sys.executable, "-m", "jaxlm.main", "--config", os.path.join(REPO, "configs", "shakespeare_char.yaml"),
               f"workdir={args.workdir}", f"data.sources=[{{path: {args.data}}}]", "log.progress=false",
               *args.overrides]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    wall = time.perf_counter() - start

    rows = [json.loads(line) for line in open(os.path.join(args.workdir, "metrics.jsonl"))]
    evals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    compile_s = next((r["compile_seconds"] for r in rows if "compile_seconds" in r), float("nan"))
    val = evals[-1][1]
    print(f"\nvalidation loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in evals))
    print(f"{'':34s} {'val loss':>9s} {'wall s':>8s}")
    print(f"{'reference (PyTorch, quoted)':34s} {REFERENCE['val_loss']:9.3f} {REFERENCE['wall_s']:8.1f}")
    print(f"{'jaxlm':34s} {val:9.3f} {wall:8.1f}   (compile {compile_s:.1f} s)")
    print(f"{'target':34s} {'<= ' + str(TARGET['val_loss']):>9s} {'<= ' + str(int(TARGET['wall_s'])):>8s}")
    print(f"wall ratio jaxlm / reference: {wall / REFERENCE['wall_s']:.2f}; "
          f"{'MET' if val <= TARGET['val_loss'] and wall <= TARGET['wall_s'] else 'NOT MET'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
