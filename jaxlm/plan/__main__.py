"""python -m jaxlm.plan: how large a model, on how many tokens, on what hardware, for how long.

  python -m jaxlm.plan --flops 1e21                                  # compute-optimal N and D
  python -m jaxlm.plan --devices 256 --device-type v5p --days 10 --mfu 0.5
  python -m jaxlm.plan check --params 175e9 --tokens 300e9           # under-trained?
  python -m jaxlm.plan memory --preset llama-8b --devices 64 --device-type v5p --batch 256 --seq-len 8192
  python -m jaxlm.plan memory --config configs/demo.yaml --devices 8 --mesh data=2,fsdp=4
  python -m jaxlm.plan fit runs/n1 runs/n2 ... --budget 1e20 --plot isoflop.png
  python -m jaxlm.plan compile --config configs/llama-1b.yaml --topology v5p-128 [--slices 2] [k=v ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional

from jaxlm.config import load_config
from jaxlm.parallel.mesh import mesh_shape
from jaxlm.plan import PlanError
from jaxlm.plan.fit import fit_law, load_runs
from jaxlm.plan.hardware import DEVICES, GiB, get_device
from jaxlm.plan.memory import (MeshShape, Workload, count_params, estimate_memory, estimate_time, flops_per_token,
                               parse_mesh, preset, recommend_mesh)
from jaxlm.plan.plot import plot_isoflops
from jaxlm.plan.scaling import LAWS, allocate, check_allocation, flops_from_hardware
from jaxlm.plan.tables import table

COMMANDS = ("size", "check", "memory", "fit", "compile")


def human(x: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def positive_int(text: str) -> int:
    value = positive(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text}")
    return int(value)


def fraction(text: str) -> float:
    value = positive(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text} (e.g. 0.4 for 40%)")
    return value


# ----------------------------------------------------------------------------------------------
# size / check


def _budget(args) -> float:
    if args.flops is not None:
        return args.flops
    if args.devices is None or args.device_type is None or args.days is None:
        raise PlanError("give a budget: --flops F, or --devices N --device-type T --days X [--mfu M]")

    device = get_device(args.device_type)
    flops = flops_from_hardware(args.devices, device.peak_bf16_flops, args.days, args.mfu)
    hours = args.devices * args.days * 24
    print(f"{args.devices} x {device.name} ({device.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16) for "
          f"{args.days:g} days at {args.mfu:.0%} MFU = {flops:.3g} FLOPs; "
          f"{hours:,.0f} device-hours, ~${hours * (args.price or device.price_per_hour):,.0f}")
    return flops


def cmd_size(args) -> None:
    flops = _budget(args)
    rows = []
    for a in allocate(flops):
        rows.append([a.law, human(a.params), human(a.tokens), f"{a.tokens_per_param:.1f}",
                     "-" if a.loss is None else f"{a.loss:.3f}"])
    print(f"compute-optimal allocation for C = {flops:.3g} FLOPs (C = 6 N D):")
    print(table(["law", "params N", "tokens D", "tokens/param", "predicted loss"], rows))
    for key, law in LAWS.items():
        print(f"  {key}: {law.label}")


def cmd_check(args) -> None:
    checks = check_allocation(args.params, args.tokens)
    c0 = checks[0]
    print(f"N = {human(args.params)} parameters on D = {human(args.tokens)} tokens "
          f"({args.tokens / args.params:.1f} tokens/param): C = {c0.flops:.3g} FLOPs")
    rows = []
    for c in checks:
        rows.append([c.law, human(c.optimal_params), human(c.optimal_tokens), f"{c.params_ratio:.2f}x",
                     f"{c.tokens_ratio:.2f}x",
                     "-" if c.loss is None else f"{c.loss:.3f} vs {c.optimal_loss:.3f}",
                     "-" if c.equivalent_flops is None else f"{c.equivalent_flops:.3g} ({c.compute_wasted:.0%} less)"])
    print(table(["law", "optimal N", "optimal D", "N / N_opt", "D / D_opt", "loss: yours vs optimal",
                 "compute an optimal model needs for your loss"], rows))
    ref = checks[0]  # approach 1, the law behind Chinchilla's Table 3
    if ref.params_ratio > 1.5:
        print(f"The model is {ref.params_ratio:.1f}x larger than compute-optimal ({ref.law}): under-trained. "
              f"The same compute buys a {human(ref.optimal_params)} model on {human(ref.optimal_tokens)} tokens.")
    elif ref.params_ratio < 1 / 1.5:
        print("The model is smaller than compute-optimal: over-trained for its size (cheaper to serve).")
    else:
        print("Within 1.5x of compute-optimal.")


# ----------------------------------------------------------------------------------------------
# memory


def _model_and_workload(args):
    mesh_from_config = None
    if args.config:
        config = load_config(args.config, args.set or [])
        model = config.model
        work = dataclasses.asdict(Workload.of(config))
        tokens = config.train.steps * config.train.global_batch * config.data.seq_len
        mesh_from_config = config.mesh
    elif args.preset:
        model = preset(args.preset)
        work = dict(global_batch=8, seq_len=min(model.max_seq_len, 2048))
        tokens = None
    else:
        raise PlanError("describe the model: --preset NAME (e.g. llama-8b) or --config path/to/config.yaml")
    for key in ("global_batch", "seq_len", "micro_batch", "remat", "compute_dtype", "param_dtype",
                "optimizer", "loss_chunk"):
        value = getattr(args, key)
        if value is not None:
            work[key] = value
    if args.device_type == "cpu":
        work["platform"] = "cpu"
    elif args.device_type and get_device(args.device_type).name.startswith("NVIDIA"):
        work["platform"] = "gpu"
    workload = Workload(**work)
    if args.tokens is not None:
        tokens = args.tokens
    mesh = None
    if args.mesh:
        mesh = parse_mesh(args.mesh)
    elif mesh_from_config is not None and args.devices:
        mesh = MeshShape(**mesh_shape(mesh_from_config, args.devices))
    return model, workload, mesh, tokens


def cmd_memory(args) -> None:
    model, work, mesh, tokens = _model_and_workload(args)
    device = None if args.device_type in (None, "cpu") else get_device(args.device_type)
    n = count_params(model)
    print(f"model: {model.family}, {human(n)} parameters, d_model {model.d_model}, {model.n_layers} layers, "
          f"{model.n_heads} heads ({model.n_kv_heads} kv), vocab {model.vocab_size}, "
          f"{'tied' if model.tie_embeddings else 'untied'} embeddings")
    print(f"step: {work.global_batch} x {work.seq_len} tokens, micro-batch {work.micro_batch}, "
          f"remat {work.remat}, params {work.param_dtype}, compute {work.compute_dtype}, {work.optimizer}")
    if mesh is None:
        if not args.devices or device is None:
            raise PlanError("give --mesh data=..,fsdp=..,tensor=..,pipe=.. or --devices N --device-type T "
                            "to get a recommended mesh")
        mesh, estimate = recommend_mesh(model, work, args.devices, device.hbm_bytes)
        print(f"recommended mesh for {args.devices} x {device.name}: {mesh} "
              "(least model parallelism that fits in 90% of memory)")
    else:
        if args.devices and mesh.devices != args.devices:
            raise PlanError(f"mesh {mesh} has {mesh.devices} devices but --devices is {args.devices}")
        estimate = estimate_memory(model, work, mesh)
        print(f"mesh: {mesh}")
    rows = [[name, f"{value / GiB:.2f}"] for name, value in estimate.rows()]
    print(table(["per device", "GiB"], rows))
    if estimate.logits_dominate and estimate.at_loss > 0.3 * estimate.total and work.loss_chunk == 0:
        print("the (tokens, vocab) logits dominate: set model.loss_chunk (--loss-chunk 4096) or a smaller micro-batch")
    if device is not None:
        verdict = "fits" if estimate.total <= device.hbm_bytes else "DOES NOT FIT"
        print(f"{device.name} has {device.hbm_bytes / GiB:.0f} GiB: {verdict} "
              f"({estimate.total / device.hbm_bytes:.0%} used)")
    if tokens is None:
        law = LAWS["approach1"]
        tokens = law.tokens(law.flops_for_params(n))
        print(f"tokens: {human(tokens)} (compute-optimal for this size, approach 1; set --tokens)")
    per_token = flops_per_token(model, work.seq_len)
    if device is not None:
        price = args.price if args.price is not None else device.price_per_hour
        t = estimate_time(per_token * tokens, mesh.devices, device.peak_bf16_flops, args.mfu, price)
        print(f"time: {t.flops:.3g} FLOPs ({per_token / n:.2f} x N per token) at {args.mfu:.0%} MFU = "
              f"{t.device_hours:,.0f} device-hours = {t.wall_hours / 24:,.1f} days on {mesh.devices} devices; "
              f"cost ${t.cost:,.0f} at ${price:.2f}/device-hour")


# ----------------------------------------------------------------------------------------------
# fit


def cmd_fit(args) -> None:
    points = load_runs(args.runs, args.points, args.metric)
    result = fit_law(points, bootstrap=args.bootstrap, seed=args.seed)
    law = result.law
    print(f"fitted on {result.points} points from {result.runs} runs (Huber delta 1e-3 on log loss, "
          f"L-BFGS from a grid of starts; {len(result.bootstrap) if result.bootstrap is not None else 0} "
          "bootstrap refits over runs)")
    rows = []
    for name in result.CONSTANTS:
        lo_hi = result.interval(name)
        rows.append([name, f"{getattr(law, name):.4g}", "-" if lo_hi is None else f"{result.std(name):.3g}",
                     "-" if lo_hi is None else f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]"])
    print(table(["constant", "value", "bootstrap std", "90% interval"], rows))
    print(f"N_opt ∝ C^{law.a:.3f}, D_opt ∝ C^{law.b:.3f}")
    if args.budget:
        n, d = law.params(args.budget), law.tokens(args.budget)
        line = (f"for C = {args.budget:.3g} FLOPs: N = {human(n)}, D = {human(d)} ({d / n:.1f} tokens/param), "
                f"predicted loss {law.loss(n, d):.3f}")
        interval = result.optimal_params_interval(args.budget)
        if interval:
            line += f"; N 90% interval [{human(interval[0])}, {human(interval[1])}]"
        print(line)
    if args.plot:
        print(f"wrote {plot_isoflops(law, points, args.plot)}")


# ----------------------------------------------------------------------------------------------
# compile


def cmd_compile(args) -> int:
    from jaxlm.config import load_config
    from jaxlm.plan.aot import compile_report, format_report, parse_topology

    topo = parse_topology(args.topology, args.slices)  # a bad name fails before the config loads
    config = load_config(args.config, args.overrides)
    print(f"compiling init, train step and eval step for {topo.devices} {topo.device.name} chips...", flush=True)
    report = compile_report(config, topo)
    print(format_report(report))
    return 0 if report.fits else 1


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxlm.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{size,check,memory,fit,compile}")
    devices = ", ".join(sorted(DEVICES))

    size = sub.add_parser("size", help="compute-optimal N and D for a budget (the default command)")
    size.add_argument("--flops", type=positive, help="training budget in FLOPs, e.g. 1e21")
    size.add_argument("--devices", type=positive_int, help="number of accelerators")
    size.add_argument("--device-type", help=f"one of: {devices}")
    size.add_argument("--days", type=positive, help="wall-clock days of training")
    size.add_argument("--mfu", type=fraction, default=0.4, help="model FLOPs utilisation (default 0.4)")
    size.add_argument("--price", type=positive, help="price per device-hour (default: the table's)")

    check = sub.add_parser("check", help="how far a chosen (N, D) is from compute-optimal")
    check.add_argument("--params", type=positive, required=True, help="parameters N, e.g. 175e9")
    check.add_argument("--tokens", type=positive, required=True, help="training tokens D, e.g. 300e9")

    memory = sub.add_parser("memory", help="per-device memory, a mesh, time and cost")
    memory.add_argument("--config", help="a jaxlm training config (model, batch, mesh, remat come from it)")
    memory.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable")
    memory.add_argument("--preset", help="a known shape: gpt2-124m ... llama-70b")
    memory.add_argument("--devices", type=positive_int, help="device count (recommends a mesh without --mesh)")
    memory.add_argument("--device-type", help=f"one of: {devices}, or cpu (XLA CPU's float32 activations)")
    memory.add_argument("--mesh", help="data=..,fsdp=..,tensor=..,pipe=.. (sizes multiply to the device count)")
    memory.add_argument("--batch", dest="global_batch", type=positive_int, help="global batch in sequences")
    memory.add_argument("--micro-batch", type=positive_int, help="sequences per micro-batch")
    memory.add_argument("--seq-len", type=positive_int, help="sequence length")
    memory.add_argument("--remat", choices=("none", "dots", "full"))
    memory.add_argument("--compute-dtype", choices=("bfloat16", "float32", "float16"))
    memory.add_argument("--param-dtype", choices=("float32", "bfloat16"))
    memory.add_argument("--optimizer", choices=("adamw", "lion", "adafactor"))
    memory.add_argument("--loss-chunk", type=positive_int, help="cross-entropy chunk in tokens")
    memory.add_argument("--tokens", type=positive, help="training tokens for the time estimate")
    memory.add_argument("--mfu", type=fraction, default=0.4, help="model FLOPs utilisation (default 0.4)")
    memory.add_argument("--price", type=positive, help="price per device-hour (default: the table's)")

    fit = sub.add_parser("fit", help="fit L(N,D) = E + A/N^a + B/D^b to your runs")
    fit.add_argument("runs", nargs="+", help="run workdirs (run.json + metrics.jsonl)")
    fit.add_argument("--points", choices=("final", "all"), default="final",
                     help="each run's last eval loss (default) or every logged one")
    fit.add_argument("--metric", default="val_loss", help="which loss field (default val_loss)")
    fit.add_argument("--budget", type=positive, help="recommend N and D for this many FLOPs")
    fit.add_argument("--bootstrap", type=int, default=100, help="bootstrap refits for uncertainty (0: none)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--plot", help="write IsoFLOP curves and the frontier to this PNG")

    aot = sub.add_parser("compile", help="compile the real run for a TPU slice without one (needs jaxlm[tpu]); "
                                         "exit status 1 when it does not fit")
    aot.add_argument("--config", required=True, help="a jaxlm training config")
    aot.add_argument("--topology", required=True, help="Cloud TPU accelerator type: v4-8, v5e-16, v5p-128, v6e-8, ...")
    aot.add_argument("--slices", type=positive_int, default=1,
                     help="slices joined over the data-centre network along mesh.dcn_axis (default 1)")
    aot.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    if argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "size")  # `python -m jaxlm.plan --flops 1e21`
    args = parser.parse_args(argv)
    try:
        commands = {"size": cmd_size, "check": cmd_check, "memory": cmd_memory, "fit": cmd_fit, "compile": cmd_compile}
        return commands[args.command](args) or 0
    except (PlanError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
