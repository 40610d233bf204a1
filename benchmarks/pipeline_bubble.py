"""Pipeline bubble: step time of the real pipelined train step as the micro-batch count M grows.

    python benchmarks/pipeline_bubble.py [--stages 4] [--micro 1,2,4,8,16] [--repeats 2] [--steps 5]

One global batch, split into M micro-batches, goes through S = --stages pipeline stages (the rest
of the devices on `data`); GPipe and the circular schedule (--repeats rounds per device) side by
side. The bubble is (S-1)/(R*M+S-1): the fraction of the pass each stage idles — or, on fake CPU
devices, computes on nothing, which costs the same. Time per step should follow
(R*M+S-1)/(R*M) ~ 1/(1 - bubble) until the micro-batches get too small to keep the device busy.
Runs on whatever devices JAX sees; on a CPU it makes 8 fake devices.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ["JAX_PLATFORMS"] == "cpu" and "device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm.config import config_from_dict  # noqa: E402
from jaxlm.parallel import pipeline  # noqa: E402
from jaxlm.train import setup  # noqa: E402
from jaxlm.train.step import BATCH_KEYS  # noqa: E402


def make_config(stages: int, micro: int, repeats: int, args) -> object:
    devices = jax.device_count()
    return config_from_dict({
        "data": {"seq_len": args.seq_len},
        "model": {"family": "llama", "vocab_size": 512, "d_model": args.d_model, "n_layers": args.layers,
                  "n_heads": 4, "max_seq_len": args.seq_len},
        "mesh": {"data": devices // stages, "pipe": stages},
        "pipeline": {"schedule": "circular" if repeats > 1 else "gpipe", "repeats": repeats},
        "train": {"steps": 100, "global_batch": args.batch, "micro_batch": args.batch // micro},
        "optim": {"schedule": {"name": "constant"}},
    })


def time_step(config, steps: int) -> tuple[float, float]:
    """(median seconds per step, compile seconds) of the real train step on this config's mesh."""
    run = setup.build(config)
    state, step = run.init(), run.train_step
    n = config.train.global_batch // config.train.micro_batch
    rows, length = config.train.micro_batch, config.data.seq_len
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (n, rows, length + 1))
    batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "segment_ids": np.ones((n, rows, length)),
             "positions": np.broadcast_to(np.arange(length), (n, rows, length)), "loss_mask": np.ones((n, rows, length))}
    batch = {k: jax.device_put(jnp.asarray(batch[k], jnp.int32), run.batch_sharding) for k in BATCH_KEYS}
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times), compile_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--micro", default="1,2,4,8,16", help="micro-batch counts M to compare")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per device of the circular schedule")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (all M micro-batches)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median)")
    args = parser.parse_args(argv)
    s = args.stages
    rows = []
    for repeats in (1, args.repeats):
        for m in [int(x) for x in args.micro.split(",")]:
            if repeats > 1 and m < s:
                continue  # the circular schedule needs M >= S
            seconds, compile_s = time_step(make_config(s, m, repeats, args), args.steps)
            rows.append((repeats, m, pipeline.bubble_fraction(s, m, repeats), seconds, compile_s))
    base = rows[0][3]
    device = jax.devices()[0]
    print(f"pipeline bubble: {s} stages x {jax.device_count() // s} data, {args.layers} layers, d_model "
          f"{args.d_model}, {args.batch} x {args.seq_len} tokens per step; {jax.device_count()} x "
          f"{device.device_kind} on {platform.machine()} with {os.cpu_count()} CPUs")
    print(f"{'schedule':12s} {'M':>4s} {'bubble':>7s} {'step ms':>9s} {'vs first':>8s} {'expected':>8s} "
          f"{'compile s':>9s}")
    first_bubble = rows[0][2]
    for repeats, m, bubble, seconds, compile_s in rows:
        name = "gpipe" if repeats == 1 else f"circular x{repeats}"
        expected = (1 - first_bubble) / (1 - bubble)
        print(f"{name:12s} {m:4d} {100 * bubble:6.1f}% {1000 * seconds:9.1f} {seconds / base:8.2f} "
              f"{expected:8.2f} {compile_s:9.1f}")
    print("(vs first: step time / the first row's. expected: the same work with only the bubble changing, "
          "(1 - first bubble) / (1 - bubble))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
