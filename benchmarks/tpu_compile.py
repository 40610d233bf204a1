"""Recipes compiled for Cloud TPU slices on a CPU machine: XLA's per-chip memory vs the planner's.

    python benchmarks/tpu_compile.py              # every case below (tens of minutes on 2 cores)
    python benchmarks/tpu_compile.py --only 0 3   # some of them
    python benchmarks/tpu_compile.py --planner-only   # the planner's side alone, in seconds

Each case builds the recipe's mesh on the slice's compile-only devices (libtpu, `jaxlm[tpu]`),
lowers and compiles the real train step, and prints the compiler's per-chip bytes beside
`jaxlm.plan.memory`'s estimate (the table in docs/tpu.md). `python -m jaxlm.plan compile` does the
same for one recipe, with the init and eval programs and the step-time estimate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs nothing: every program is for TPU

from jaxlm.config import load_config  # noqa: E402
from jaxlm.plan import aot  # noqa: E402
from jaxlm.plan.tables import table  # noqa: E402

GiB = 2**30
LLAMA_PIPE = ["mesh.data=1", "mesh.fsdp=-1", "mesh.pipe=4", "train.micro_batch=64", "pipeline.microbatches=8"]
CASES = [  # (recipe, topology, slices, overrides)
    ("configs/gpt2-124m.yaml", "v4-8", 1, []),
    ("configs/llama-1b.yaml", "v5e-16", 1, []),
    ("configs/llama-1b.yaml", "v5p-8", 1, []),
    ("configs/llama-1b.yaml", "v6e-8", 1, []),
    ("configs/llama-8b.yaml", "v5p-64", 1, []),
    ("configs/llama-1b.yaml", "v5p-32", 1, LLAMA_PIPE),  # pipeline: 4 stages x fsdp 4
    ("configs/llama-1b.yaml", "v5e-16", 2, ["mesh.data=2"]),  # two slices, data across them
    ("configs/llama-8b.yaml", "v5e-16", 1, []),  # does not fit: 16 GiB chips
]


def run_case(recipe: str, topology: str, slices: int, overrides: list[str]) -> list:
    config = load_config(recipe, overrides)
    topo = aot.parse_topology(topology, slices)
    start = time.perf_counter()
    report = aot.compile_report(config, topo, programs=("train step",))
    seconds = time.perf_counter() - start
    train, device = report.train, topo.device
    name = os.path.basename(recipe) + (f" {' '.join(overrides)}" if overrides else "")
    where = topology + (f" x{slices}" if slices > 1 else "")
    return [name, where, ",".join(f"{k}={v}" for k, v in report.mesh.items() if v > 1),
            f"{train.arguments / GiB:.2f}", f"{train.temps / GiB:.2f}", f"{train.peak / GiB:.2f}",
            f"{report.planner_bytes / GiB:.2f}", f"{report.planner_error:+.1%}",
            f"{'fits' if report.fits else 'DOES NOT FIT'} ({train.peak / device.hbm_bytes:.0%} of {device.hbm_bytes / GiB:.0f})",
            f"{seconds:.0f}"]


def planner_case(recipe: str, topology: str, slices: int, overrides: list[str]) -> list:
    """The planner's side alone (no compile): its estimate on the mesh the compile uses."""
    from jaxlm.parallel.mesh import build_mesh
    from jaxlm.plan.memory import MeshShape, estimate_memory

    config = load_config(recipe, overrides)
    topo = aot.parse_topology(topology, slices)
    mesh = dict(build_mesh(config, aot.topology_devices(topo)).shape)
    work = aot.planner_workload(config)
    estimate = estimate_memory(config.model, work, MeshShape(**mesh))
    name = os.path.basename(recipe) + (f" {' '.join(overrides)}" if overrides else "")
    return [name, topology + (f" x{slices}" if slices > 1 else ""), ",".join(f"{k}={v}" for k, v in mesh.items() if v > 1),
            f"{estimate.state / GiB:.2f}", f"{estimate.temp / GiB:.2f}", f"{estimate.total / GiB:.2f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="*", help="case numbers to run (default: all)")
    parser.add_argument("--planner-only", action="store_true", help="only the planner's estimates (no compile)")
    args = parser.parse_args()
    if args.planner_only:
        rows = [planner_case(*case) for i, case in enumerate(CASES) if not args.only or i in args.only]
        print(table(["recipe", "slice", "mesh", "state GiB", "temps GiB", "planner total GiB"], rows))
        return 0
    headers = ["recipe", "slice", "mesh", "args GiB", "temps GiB", "XLA total GiB", "planner GiB",
               "planner vs XLA", "verdict (% of HBM GiB)", "compile s"]
    rows = []
    for i, case in enumerate(CASES):
        if args.only and i not in args.only:
            continue
        try:
            rows.append(run_case(*case))
        except Exception as e:  # one broken case must not hide the others' figures
            rows.append([os.path.basename(case[0]), case[1], f"error: {type(e).__name__}: {str(e)[:200]}"] + [""] * 7)
        print(table(headers, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(headers, rows))
    print("per chip, train step; XLA total = arguments + temporaries + non-aliased outputs + code. "
          "Compile seconds on this machine's CPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
