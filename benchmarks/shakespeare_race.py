"""Char-level Tiny Shakespeare race: wall time to a validation loss, against the small baseline.

    python benchmarks/shakespeare_race.py [--data data/shakespeare_char] [--workdir runs/race]

The recipe is the well-known small char-level baseline's (configs/shakespeare_char.yaml: 4 layers,
4 heads, 128 wide, context 64, batch 12, 2,000 steps, lr 1e-3, 100 warm-up steps, cosine to 1e-4,
no dropout, gpt2 family), evaluated every 250 steps on 20 batches. The wall time is the whole
`python -m jaxlm.main` process: start-up, compilation and evaluations included. The reference row
is that recipe in the PyTorch reference trainer on the same 2-core machine (figures quoted in the
issue, not re-run here: 1.886 in 102 s).

Two jaxlm rows run one after the other: float32 throughout, and float32 activations with the
layers' matmuls in bfloat16 (`model.matmul_dtype=bfloat16`, float32 accumulation), which CPUs with
AMX (and GPUs, TPUs) multiply several times faster. Parameters and optimizer stay float32 in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = {"val_loss": 1.886, "wall_s": 102.0}
TARGET = {"val_loss": 1.89, "wall_s": 50.0}
VARIANTS = {"float32": [], "bfloat16 matmuls": ["model.matmul_dtype=bfloat16"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO, "data", "shakespeare_char"))
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "shakespeare_race"))
    parser.add_argument("--only", choices=list(VARIANTS), help="run one variant instead of both")
    parser.add_argument("overrides", nargs="*", help="extra key.path=value overrides for the trainer")
    args = parser.parse_args()

    if not os.path.isfile(os.path.join(args.data, "manifest.json")):
        subprocess.run([sys.executable, "-m", "data_prep", "--config",
                        os.path.join(REPO, "data_prep", "configs", "shakespeare_char.yaml"), f"output={args.data}"],
                       cwd=REPO, check=True)
    results = {}
    for name, variant in VARIANTS.items():
        if args.only in (None, name):
            results[name] = race(args.data, f"{args.workdir}_{name.split()[0]}", variant + args.overrides)

    print(f"\n{'':34s} {'val loss':>9s} {'wall s':>8s}")
    print(f"{'reference (PyTorch, quoted)':34s} {REFERENCE['val_loss']:9.3f} {REFERENCE['wall_s']:8.1f}")
    for name, r in results.items():
        met = r["val"] <= TARGET["val_loss"] and r["wall"] <= TARGET["wall_s"]
        print(f"{'jaxlm, ' + name:34s} {r['val']:9.3f} {r['wall']:8.1f}   (compile {r['compile']:.1f} s; "
              f"{r['wall'] / REFERENCE['wall_s']:.2f}x the reference's time; {'MET' if met else 'NOT MET'})")
    print(f"{'target':34s} {'<= ' + str(TARGET['val_loss']):>9s} {'<= ' + str(int(TARGET['wall_s'])):>8s}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def race(data: str, workdir: str, overrides: list[str]) -> dict:
    """One training run from scratch; its final validation loss, wall and compile seconds."""
    if os.path.exists(workdir):
        shutil.rmtree(workdir)  # a fresh run: no resume from an earlier race
    command = [sys.executable, "-m", "jaxlm.main", "--config", os.path.join(REPO, "configs", "shakespeare_char.yaml"),
               f"workdir={workdir}", f"data.sources=[{{path: {data}}}]", "log.progress=false", *overrides]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    wall = time.perf_counter() - start

    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    evals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    compile_s = next((r["compile_seconds"] for r in rows if "compile_seconds" in r), float("nan"))
    print(f"{' '.join(overrides) or 'float32'}: validation loss by step: "
          + ", ".join(f"{s}: {v:.3f}" for s, v in evals))
    return {"val": evals[-1][1], "wall": wall, "compile": compile_s}


if __name__ == "__main__":
    main()
