"""Recipes compiled for Cloud TPU slices on a CPU machine: the compiler's per-chip peak vs the planner's.

    python benchmarks/tpu_compile.py              # every recipe (an hour or more on a loaded 2-core machine)
    python benchmarks/tpu_compile.py --only 0 3   # some of them
    python benchmarks/tpu_compile.py --planner-only   # the planner's side alone, in seconds
    python benchmarks/tpu_compile.py --only 0 --hbm-limit-mib 7000   # libtpu told the chip has 7,000 MiB

Each recipe (`jaxlm.plan.aot.REFERENCE_RECIPES`) builds its mesh on the slice's compile-only devices
(libtpu, `jaxlm[tpu]`), lowers and compiles the real train step, and prints the compiler's per-chip
peak beside `jaxlm.plan.memory`'s estimate (the table in docs/tpu.md). `python -m jaxlm.plan compile`
does the same for one recipe, with the init and eval programs and the step-time estimate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs nothing: every program is for TPU

from jaxlm.config import load_config  # noqa: E402
from jaxlm.plan import aot  # noqa: E402
from jaxlm.plan.memory import MeshShape, Workload, estimate_memory  # noqa: E402
from jaxlm.plan.tables import table  # noqa: E402

GiB = 2**30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(recipe: aot.Recipe):
    return load_config(os.path.join(REPO, recipe.config), list(recipe.overrides))


def _verdict(need: float, hbm: float) -> str:
    return f"{'fits' if need <= hbm else 'DOES NOT FIT'} ({need / hbm:.0%} of {hbm / GiB:.0f})"


def run_case(recipe: aot.Recipe) -> list:
    config = _config(recipe)
    topo = aot.parse_topology(recipe.topology, recipe.slices)
    start = time.perf_counter()
    report = aot.compile_report(config, topo, programs=("train step",))
    seconds = time.perf_counter() - start
    train, hbm = report.train, topo.device.hbm_bytes
    compiler = ("refused: " if train.refused else "") + _verdict(train.peak, hbm)
    return [recipe.name, recipe.slice_name, ",".join(f"{k}={v}" for k, v in report.mesh.items() if v > 1),
            f"{train.arguments / GiB:.2f}", "" if train.refused else f"{train.temps / GiB:.2f}",
            f"{train.peak / GiB:.2f}", f"{report.planner_bytes / GiB:.2f}", f"{report.planner_error:+.1%}",
            compiler, _verdict(report.planner_bytes, hbm), f"{seconds:.0f}"]


def planner_case(recipe: aot.Recipe) -> list:
    """The planner's side alone (no compile): its estimate on the mesh the compile uses."""
    from jaxlm.parallel.mesh import build_mesh

    config = _config(recipe)
    topo = aot.parse_topology(recipe.topology, recipe.slices)
    mesh = dict(build_mesh(config, aot.topology_devices(topo)).shape)
    est = estimate_memory(config.model, Workload.of(config), MeshShape(**mesh))
    held = est.accumulator + est.weights_compute + est.activations
    return [recipe.name, recipe.slice_name, ",".join(f"{k}={v}" for k, v in mesh.items() if v > 1),
            f"{est.state / GiB:.2f}", f"{held / GiB:.2f}", f"{est.at_loss / GiB:.2f}", f"{est.in_backward / GiB:.2f}",
            f"{est.total / GiB:.2f}", _verdict(est.total, topo.device.hbm_bytes)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="*", help="recipe numbers to run (default: all)")
    parser.add_argument("--planner-only", action="store_true", help="only the planner's estimates (no compile)")
    parser.add_argument("--hbm-limit-mib", type=int, help="compile as if each chip had this much HBM (libtpu's "
                        "--xla_tpu_max_hbm_size_mib): which figure the compiler checks against HBM")
    args = parser.parse_args()
    if args.hbm_limit_mib:  # read by libtpu when it loads, at the first compile
        os.environ["LIBTPU_INIT_ARGS"] = (os.environ.get("LIBTPU_INIT_ARGS", "")
                                          + f" --xla_tpu_max_hbm_size_mib={args.hbm_limit_mib}").strip()
    recipes = [r for i, r in enumerate(aot.REFERENCE_RECIPES) if not args.only or i in args.only]
    if args.planner_only:
        print(table(["recipe", "slice", "mesh", "state GiB", "held GiB", "+ loss GiB", "+ backward GiB",
                     "planner GiB", "verdict (% of HBM GiB)"], [planner_case(r) for r in recipes]))
        print("held: gradient accumulator + compute-dtype weights + saved activations; the peak adds the larger "
              "of the loss's and the backward pass's working sets")
        return 0
    headers = ["recipe", "slice", "mesh", "XLA arguments GiB", "XLA temps GiB", "XLA peak GiB", "planner GiB",
               "planner vs XLA", "compiler's verdict (% of HBM GiB)", "planner's verdict", "compile s"]
    rows = []
    for recipe in recipes:
        try:
            rows.append(run_case(recipe))
        except Exception as e:  # one broken case must not hide the others' figures
            rows.append([recipe.name, recipe.slice_name, f"error: {type(e).__name__}: {str(e)[:200]}"]
                        + [""] * (len(headers) - 3))
        print(table(headers, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(headers, rows))
    print("per chip, train step. XLA peak: the compiler's (memory_analysis().peak_memory_in_bytes: arguments, "
          "outputs and temporaries as its buffer assignment packs them; for a refused program, the figure its "
          "refusal quotes), what it checks against HBM. XLA temps: memory_analysis's temp_size, which counts "
          "more than the compiler's buffer assignment holds (docs/tpu.md). Compile seconds on this machine's CPU.")
    if args.hbm_limit_mib:
        print(f"compiled with libtpu's HBM limit at {args.hbm_limit_mib:,} MiB: a recipe the compiler did not refuse "
              "fits that limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
