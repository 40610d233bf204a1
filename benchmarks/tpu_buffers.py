"""What XLA's TPU compiler holds at the peak of a reference recipe's train step, buffer by buffer.

    python benchmarks/tpu_buffers.py 0            # jaxlm.plan.aot.REFERENCE_RECIPES[0]: gpt2-124m on v4-8
    python benchmarks/tpu_buffers.py 4 --top 12   # the 8B on v5p-64

Compiles the train step (as benchmarks/tpu_compile.py does) with XLA's dumps on, in a temporary
folder, reads the compiler's buffer assignment (`*after_optimizations-buffer-assignment.txt`: each
value's offset and size in the temporary allocation, TPU tiling included) and the values' live
ranges (`*after_optimizations-live-range.txt`), finds the moment the most bytes of the temporary
allocation are in use, and prints the buffers live then, largest first, with their shapes (the
layout's minor-to-major order and `T(8,128)` tiles show where a dim is padded to 128 lanes) and the
operation that made them. This is how the planner's TPU terms were found (docs/tpu.md). The dumps'
format is XLA's debugging output, not an API: a libtpu other than jax's pin may need this script
changed.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tempfile

DUMP = tempfile.mkdtemp(prefix="tpu_buffers_")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs nothing: every program is for TPU
# read by libtpu when it loads: dump the train step's optimised module and its buffer assignment
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_dump_to={DUMP} --xla_dump_hlo_module_re=.*train_step.*").strip()

from jaxlm.config import load_config  # noqa: E402
from jaxlm.plan import aot  # noqa: E402
from jaxlm.plan.tables import table  # noqa: E402

GiB, MiB = 2**30, 2**20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dump(suffix: str) -> str:
    found = glob.glob(os.path.join(DUMP, f"*jit_train_step*{suffix}"))
    if not found:
        raise SystemExit(f"error: XLA wrote no *{suffix} under {DUMP}; this libtpu's dump format differs")
    return found[0]


def temp_values() -> tuple[int, list]:
    """(size of the temporary allocation, [(name, offset, size, shape)]) from the buffer assignment."""
    values, allocation, size = [], None, 0
    for line in open(_dump("after_optimizations-buffer-assignment.txt")):
        head = re.match(r"allocation \d+: size (\d+), (.*)", line)
        if head:  # the temporary allocation of the default memory space (others have a color)
            allocation = "preallocated-temp" in head.group(2) and "color" not in head.group(2)
            size = int(head.group(1)) if allocation else size
            continue
        value = re.match(r" value: <\d+ (\S+)(?: \(phi\))? @\S+> \(size=(\d+),offset=(\d+)\): (\S+)", line)
        if value and allocation:
            values.append((value.group(1), int(value.group(3)), int(value.group(2)), value.group(4)))
    return size, values


def live_ranges() -> dict:
    """value name ('fusion.3' or 'while.2{4}' for a tuple element) -> (first, last) step."""
    ranges = {}
    for line in open(_dump("after_optimizations-live-range.txt")):
        m = re.match(r"    (\S+)\{([\d,]*)\}:(\d+)-(\d+)$", line)
        if m:
            name = m.group(1) + (f"{{{m.group(2)}}}" if m.group(2) else "")
            ranges[name] = (int(m.group(3)), int(m.group(4)))
    return ranges


def op_names() -> dict:
    names = {}
    for line in open(_dump("after_optimizations.txt")):
        m = re.match(r"\s*(?:ROOT )?%?(\S+) = .*op_name=\"([^\"]*)\"", line)
        if m:
            names[m.group(1)] = m.group(2)
    return names


def peak_buffers(values: list, ranges: dict) -> tuple[int, int, list]:
    """(bytes in use at the peak, the step, the distinct buffers live then): the union of the live
    values' byte ranges, since values that share a buffer over time share its bytes."""
    live = [(name, offset, size, shape, ranges[name]) for name, offset, size, shape in values if name in ranges]
    best = (0, 0)
    for step in range(max(r[1] for *_, r in live) + 1):
        used, end = 0, -1
        for start, stop in sorted((o, o + s) for _, o, s, _, r in live if r[0] <= step <= r[1]):
            if stop > end:
                used += stop - max(start, end)
                end = stop
        best = max(best, (used, step))
    used, step = best
    seen, buffers = set(), []
    for name, offset, size, shape, r in sorted(live, key=lambda v: -v[2]):
        if r[0] <= step <= r[1] and (offset, size) not in seen:
            seen.add((offset, size))
            buffers.append((name, size, shape))
    return used, step, buffers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=int, help=f"index into REFERENCE_RECIPES (0-{len(aot.REFERENCE_RECIPES) - 1})")
    parser.add_argument("--top", type=int, default=25, help="buffers to print (default 25)")
    args = parser.parse_args()
    recipe = aot.REFERENCE_RECIPES[args.recipe]
    config = load_config(os.path.join(REPO, recipe.config), list(recipe.overrides))
    mesh, (train,) = aot.compile_programs(config, aot.topology_devices(aot.parse_topology(recipe.topology,
                                                                                          recipe.slices)),
                                          ("train step",))
    print(f"{recipe.name} on {recipe.slice_name}, mesh " + ",".join(f"{k}={v}" for k, v in mesh.items() if v > 1))
    if train.refused:
        print(f"the compiler refused it (needs {train.peak / GiB:.2f} GiB per chip) and dumped no buffer assignment")
        return 1
    allocation, values = temp_values()
    used, step, buffers = peak_buffers(values, live_ranges())
    names = op_names()
    print(f"per chip: arguments {train.arguments / GiB:.2f} GiB, memory_analysis temporaries {train.temps / GiB:.2f} "
          f"GiB, peak {train.peak / GiB:.2f} GiB; the buffer assignment's temporary allocation {allocation / GiB:.2f} "
          f"GiB, of which {used / GiB:.2f} GiB in use at its peak (step {step}):")
    rows = [[f"{size / MiB:,.1f}", name, shape, names.get(name.split("{")[0], "")[-70:]]
            for name, size, shape in buffers[:args.top]]
    print(table(["MiB", "value", "shape{layout}", "made by"], rows))
    rest = sum(size for _, size, _ in buffers[args.top:])
    print(f"... and {len(buffers) - len(rows)} smaller buffers, {rest / MiB:,.1f} MiB (dumps in {DUMP})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
