"""Ahead-of-time compile of a run for a Cloud TPU slice, on a machine without TPUs.

With `libtpu` installed (`pip install "jaxlm[tpu]"`), JAX describes a slice's chips from its
topology alone; the run's real init, train step and eval step are lowered and compiled for them,
and XLA's TPU compiler reports each program's per-chip memory and its estimate of the step time.
A run that does not fit is found here, before any TPU is rented.

Accelerator types are Cloud TPU's: v4-N and v5p-N count TensorCores (two per chip, one JAX device
each chip: megacore), v5e-N (= v5litepod-N) and v6e-N count chips.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

from jaxlm.plan import PlanError
from jaxlm.plan.hardware import Device, get_device

# generation -> (topology dims, cores per chip, chips per host in a multi-host slice)
GENERATIONS = {"v4": (3, 2, (2, 2, 1)), "v5p": (3, 2, (2, 2, 1)), "v5e": (2, 1, (2, 2, 1)), "v6e": (2, 1, (2, 2, 1))}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}
MAX_CHIPS = {"v4": 4096, "v5p": 8960, "v5e": 256, "v6e": 256}
SINGLE_HOST_CHIPS = 8  # v5e/v6e slices up to 8 chips are one host


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as asked, e.g. v5p-128
    generation: str  # v4 | v5p | v5e | v6e
    chips: int  # per slice
    shape: tuple  # chips along each ICI dim
    chips_per_host: tuple
    slices: int = 1

    @property
    def topology_name(self) -> str:  # what libtpu calls it, e.g. v5p:4x4x4
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def device(self) -> Device:
        return get_device(self.generation)

    @property
    def devices(self) -> int:
        return self.chips * self.slices


def _shape(generation: str, chips: int) -> tuple:
    """The slice's ICI shape: from the smallest slice, double the shortest side (the last on ties)."""
    ndim = GENERATIONS[generation][0]
    if ndim == 2:
        shape = [1, 1]
        while shape[0] * shape[1] < chips:
            i = 0 if shape[0] < shape[1] else 1
            shape[i] *= 2
        return tuple(shape)
    shape = [2, 2, 1]
    while shape[0] * shape[1] * shape[2] < chips:
        i = max(j for j in range(3) if shape[j] == min(shape))
        shape[i] *= 2
    return tuple(shape)


def parse_topology(name: str, slices: int = 1) -> Topology:
    """'v5p-128' -> 64 chips in 4x4x4; unknown names raise PlanError saying what is known."""
    known = "v4-8 ... v4-8192, v5p-8 ... v5p-17920, v5e-1 ... v5e-256 (or v5litepod-N), v6e-1 ... v6e-256"
    match = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v5lite|v6e|v6)-(\d+)", name.strip().lower())
    if not match:
        raise PlanError(f"unknown TPU topology {name!r}; give a Cloud TPU accelerator type, known: {known}")
    generation = ALIASES.get(match.group(1), match.group(1))
    count = int(match.group(2))
    ndim, cores_per_chip, host = GENERATIONS[generation]
    chips = count // cores_per_chip
    shape = _shape(generation, max(chips, 1))
    valid_sizes = (chips >= (4 if ndim == 3 else 1) and chips * cores_per_chip == count
                   and chips <= MAX_CHIPS[generation] and shape[0] * shape[1] * (shape[2] if ndim == 3 else 1) == chips)
    if not valid_sizes:
        unit = "TensorCores (2 per chip)" if cores_per_chip == 2 else "chips"
        raise PlanError(f"{name}: {generation} slices count {unit} in powers of two, e.g. "
                        f"{generation}-{4 * cores_per_chip if ndim == 3 else 4}; known: {known}")
    if slices < 1:
        raise PlanError(f"--slices must be at least 1, got {slices}")
    if ndim == 2:
        per_host = (shape[0], shape[1], 1) if chips <= SINGLE_HOST_CHIPS else host
    else:
        per_host = host
    return Topology(name, generation, chips, shape, per_host, slices)


def topology_devices(topo: Topology) -> list:
    """Compile-only JAX devices of the slice(s), from libtpu's description of the topology."""
    # Compile-only: no chip is claimed, so several processes may load libtpu at once (it takes a
    # lock file otherwise, which a second compile, e.g. a test beside a benchmark, would fail on).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
        desc = topologies.get_topology_desc(
            topology_name=topo.topology_name, platform="tpu", chips_per_host_bounds=topo.chips_per_host,
            num_slices=topo.slices, **({"chip_config_name": "megacore"} if GENERATIONS[topo.generation][1] == 2 else {}))
    except Exception as e:  # no libtpu, or one that does not know this generation
        raise PlanError(f"cannot describe {topo.name} ({topo.topology_name}): {e}. Compiling for TPU needs "
                        "libtpu: pip install \"jaxlm[tpu]\"") from None
    return list(desc.devices)


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Program:
    """What XLA's TPU compiler says about one compiled program, per chip."""
    name: str
    arguments: int
    outputs: int
    temps: int
    aliased: int  # outputs written into donated arguments
    code: int
    flops: Optional[float]  # per chip
    seconds: Optional[float]  # the compiler's own estimate of the run time
    peak_memory: int = 0  # the compiler's peak: arguments, outputs and temporaries as its buffer assignment packs them
    refused: bool = False  # the compiler refused it: its peak exceeds the HBM it may use

    @property
    def peak(self) -> int:
        """HBM the program needs per chip: the compiler's own peak, the figure it checks against the
        chip's HBM (a program over it is refused, `_compile`). `temps` (memory_analysis's
        temp_size_in_bytes) is no part of it on TPU: it counts more than the compiler's buffer
        assignment holds, and a program whose arguments + temps exceed HBM compiles when its peak
        does not (docs/tpu.md). Backends that report no peak: the sum of the parts."""
        return self.peak_memory or self.arguments + self.outputs - self.aliased + self.temps + self.code


def _program(name: str, compiled) -> Program:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    seconds = cost.get("optimal_seconds")
    return Program(name, mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes,
                   mem.alias_size_in_bytes, mem.generated_code_size_in_bytes, cost.get("flops"),
                   seconds if seconds and seconds > 0 else None, getattr(mem, "peak_memory_in_bytes", 0) or 0)


PROGRAMS = ("init", "train step", "eval step")


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _per_chip_bytes(tree) -> int:
    """Bytes one chip holds of these sharded ShapeDtypeStructs."""
    import jax
    import numpy as np

    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _compile(name: str, lowered, args) -> Program:
    """One program's report; when XLA's TPU compiler refuses it for want of HBM, the memory it said
    the program needs (it gives no memory analysis then). That figure is the same peak
    `Program.peak` reads from a compiled program: arguments, outputs and temporaries together,
    although the message calls it "HLO temporaries"."""
    try:
        return _program(name, lowered.compile())
    except Exception as e:  # jax's JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM ...
        need = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not need:
            raise
        peak = int(float(need.group(1)) * _UNITS[need.group(2)])
        arguments = _per_chip_bytes(args)
        return Program(name, arguments, 0, max(peak - arguments, 0), 0, 0, None, None, peak, refused=True)


def compile_programs(config, devices, programs=PROGRAMS) -> tuple[dict, list[Program]]:
    """Lowers and compiles the run's init, train step and eval step (or those named in `programs`)
    for `devices` (compile-only TPU devices work). Returns the mesh's axis sizes and what the
    compiler reports."""
    import jax

    from jaxlm.parallel import rules
    from jaxlm.train import setup as setup_lib
    from jaxlm.train.state import init_state

    s = setup_lib.build(config, devices=devices)  # checks the batch and pipeline fit the mesh
    mesh, fields, t = s.mesh, s.objective.batch_fields, config.train
    micro = t.micro_batch
    state = s.abstract()
    batch = {k: jax.ShapeDtypeStruct((t.global_batch // micro, micro, config.data.seq_len), s.field_dtype(k),
                                     sharding=s.batch_sharding) for k in fields}
    micro_batch = {k: jax.ShapeDtypeStruct((micro, config.data.seq_len), s.field_dtype(k), sharding=s.micro_sharding)
                   for k in fields}
    init = jax.jit(lambda: init_state(config, s.spec, s.scheme.optimizer, s.scheme.shardings),
                   out_shardings=s.scheme.shardings)
    lowered = {"init": lambda: (init.lower(), ()),
               "train step": lambda: (s.train_step.lower(state, batch), (state, batch)),
               "eval step": lambda: (s.eval_step.lower(state["params"], micro_batch), (state["params"], micro_batch))}
    with rules.activation_sharding(mesh):  # the model's named activations on this mesh while lowering
        out = [_compile(name, *lowered[name]()) for name in programs]
    return dict(mesh.shape), out


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A shipped config compiled for a slice: one row of docs/tpu.md's table."""
    config: str  # path from the repository root
    topology: str
    slices: int = 1
    overrides: tuple = ()
    label: str = ""  # what the overrides make of it, for the table

    @property
    def name(self) -> str:
        stem = os.path.splitext(os.path.basename(self.config))[0]
        return f"{stem}, {self.label}" if self.label else stem

    @property
    def slice_name(self) -> str:
        return self.topology + (f" x {self.slices}" if self.slices > 1 else "")


PIPELINE_OVERRIDES = ("mesh.data=1", "mesh.fsdp=-1", "mesh.pipe=4", "train.micro_batch=64", "pipeline.microbatches=8")
# The recipes the planner's TPU memory model is checked against (tests/unit/jaxlm/plan/test_plan_aot.py, within 15%
# of the compiler's peak each; benchmarks/tpu_compile.py prints docs/tpu.md's table from them).
REFERENCE_RECIPES = (
    Recipe("configs/gpt2-124m.yaml", "v4-8"),
    Recipe("configs/llama-1b.yaml", "v5e-16"),
    Recipe("configs/llama-1b.yaml", "v5p-8"),
    Recipe("configs/llama-1b.yaml", "v6e-8"),
    Recipe("configs/llama-8b.yaml", "v5p-64", label="FSDP, remat full"),
    Recipe("configs/llama-1b.yaml", "v5p-32", overrides=PIPELINE_OVERRIDES,
           label="pipeline: 4 stages (gpipe, 8 micro-batches), fsdp 4"),
    Recipe("configs/llama-1b.yaml", "v5e-16", slices=2, overrides=("mesh.data=2",),
           label="2 slices (data=2 across them)"),
    Recipe("configs/llama-8b.yaml", "v5e-16", label="on 16 GiB chips: does not fit"),
)


@dataclasses.dataclass
class Report:
    topology: Topology
    mesh: dict
    programs: list[Program]
    planner_bytes: float  # the planner's per-chip estimate of the train step
    flops_per_token: float  # the planner's model FLOPs (6N + attention), for MFU
    tokens_per_step: int

    @property
    def train(self) -> Program:
        return next(p for p in self.programs if p.name == "train step")

    @property
    def peak(self) -> int:  # the largest program: what must fit
        return max(p.peak for p in self.programs)

    @property
    def fits(self) -> bool:  # the compiler refuses a program over the HBM it may use (a little under the chip's)
        return not any(p.refused for p in self.programs) and self.peak <= self.topology.device.hbm_bytes

    @property
    def planner_error(self) -> float:  # planner / compiler - 1, on the train step
        return self.planner_bytes / self.train.peak - 1


def compile_report(config, topo: Topology, programs=PROGRAMS) -> Report:
    from jaxlm.plan.memory import MeshShape, Workload, estimate_memory, flops_per_token

    if topo.slices > 1 and config.mesh.dcn_axis not in ("data", "fsdp"):
        raise PlanError(f"mesh.dcn_axis is {config.mesh.dcn_axis!r}: only a batch axis (data or fsdp) may span "
                        "slices, whose links (the data-centre network) are too slow for tensor or pipe")
    mesh, compiled = compile_programs(config, topology_devices(topo), programs)
    estimate = estimate_memory(config.model, Workload.of(config), MeshShape(**mesh))
    tokens = config.train.global_batch * config.data.seq_len
    return Report(topo, mesh, compiled, estimate.total, flops_per_token(config.model, config.data.seq_len), tokens)


def format_report(report: Report) -> str:
    from jaxlm.plan.tables import table

    gib = 2**30
    topo, device = report.topology, report.topology.device
    lines = [f"{topo.name}{f' x {topo.slices} slices' if topo.slices > 1 else ''}: {topo.devices} x {device.name} "
             f"({topo.topology_name}, {device.hbm_bytes / gib:.0f} GiB each); mesh "
             + ",".join(f"{k}={v}" for k, v in report.mesh.items())]
    rows = [[p.name + (" (refused: over HBM)" if p.refused else ""), f"{p.arguments / gib:.2f}",
             "" if p.refused else f"{p.temps / gib:.2f}", "" if p.refused else f"{(p.outputs - p.aliased) / gib:.2f}",
             f"{p.peak / gib:.2f}", f"{p.peak / device.hbm_bytes:.0%}"] for p in report.programs]
    rows.append(["planner (train step)", "", "", "", f"{report.planner_bytes / gib:.2f}",
                 f"{report.planner_bytes / device.hbm_bytes:.0%}"])
    lines.append(table(["per chip, GiB", "arguments", "temporaries", "outputs (not aliased)", "peak", "of HBM"], rows))
    lines.append("peak: the compiler's, what it checks against HBM (arguments, outputs and temporaries as its buffer "
                 "assignment packs them); temporaries: memory_analysis's, which on TPU counts more than that buffer "
                 "assignment holds")
    margin = device.hbm_bytes - report.peak
    verdict = (f"fits: {margin / gib:.2f} GiB to spare per chip" if report.fits else
               f"DOES NOT FIT: {-margin / gib:.2f} GiB per chip over the {device.hbm_bytes / gib:.0f} GiB")
    lines.append(f"{verdict}; the planner's estimate is {report.planner_error:+.0%} off the compiler's")
    seconds, counted = report.train.seconds, report.train.flops
    if seconds and counted:
        # XLA's cost analysis counts a loop body once, and the step's layers (scan) and
        # micro-batches are loops: scale its time by the share of the step's FLOPs it counted.
        model_flops = report.flops_per_token * report.tokens_per_step / topo.devices  # per chip
        share = counted / model_flops
        step = seconds / min(share, 1.0)
        tokens_per_sec = report.tokens_per_step / step
        mfu = report.flops_per_token * tokens_per_sec / (topo.devices * device.peak_bf16_flops)
        lines.append(f"compiler's time estimate: {seconds:.3g} s for the {counted:.3g} FLOPs per chip it counts "
                     f"({share:.1%} of the step's model FLOPs: loop bodies count once); scaled to the whole step "
                     f"{step:.3g} s = {tokens_per_sec:,.0f} tokens/s ({tokens_per_sec / topo.devices:,.0f} per chip), "
                     f"MFU {mfu:.0%} ({report.flops_per_token / 1e9:.3g} GFLOPs/token, "
                     f"{device.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 peak)")
    else:
        lines.append("the compiler gave no step time estimate")
    return "\n".join(lines)
