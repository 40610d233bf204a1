"""How long a checkpoint save blocks the training loop: async against synchronous, side by side.

    python benchmarks/checkpoint_stall.py [--d-model 512] [--layers 10] [--vocab 32768] [--steps 3]

Builds a llama whose train state (parameters + AdamW moments, float32) is >= 500 MB, trains a few
steps, then on the same state:
  sync   CheckpointManager(async_save=False).save(): the loop waits for the whole write;
  async  CheckpointManager(async_save=True).save(): the loop waits only for the device->host copy
         and the checksums; the write goes on in a background thread while the next steps run.
It prints the blocked time of each, their ratio (target: async <= 10 % of sync), the time of the
steps that ran while the async write was in flight (on a CPU the writer and the checksum pass share
the cores with training; on an accelerator they do not), and the time from "restore the latest
checkpoint" (including verifying its checksums) to the end of the first resumed step.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm.config import config_from_dict  # noqa: E402
from jaxlm.parallel.mesh import build_mesh  # noqa: E402
from jaxlm.train import checkpoint as ckpt, checkpoint_reader, setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps timed before, and after, each save")
    parser.add_argument("--dir", default=None, help="where checkpoints are written (default: a temp folder)")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="ckpt_stall_", dir=args.dir)
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_config(args, workdir: str, async_save: bool):
    return config_from_dict({
        "workdir": workdir,
        "data": {"seq_len": args.seq_len},
        "model": {"family": "llama", "vocab_size": args.vocab, "d_model": args.d_model, "n_layers": args.layers,
                  "n_heads": 8, "max_seq_len": args.seq_len},
        "mesh": {"data": 1},
        "train": {"steps": 10_000, "global_batch": args.batch},
        "checkpoint": {"async_save": async_save, "keep_last": 2, "handle_signals": False},
    })


def run(args, root: str) -> None:
    config = make_config(args, root, async_save=True)
    run = setup.build(config, mesh=build_mesh(config.mesh, jax.devices()[:1]))
    spec, batch_sharding, step_fn = run.spec, run.batch_sharding, run.train_step
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, args.vocab, (1, args.batch, args.seq_len + 1))
    batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "segment_ids": np.ones_like(tokens[..., 1:]),
             "positions": np.broadcast_to(np.arange(args.seq_len), tokens[..., 1:].shape),
             "loss_mask": np.ones_like(tokens[..., 1:])}
    batch = {k: jax.device_put(np.asarray(v, np.int32), batch_sharding) for k, v in batch.items()}

    state = run.init()
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    print(f"model: {spec.param_count / 1e6:.1f} M parameters; train state {state_bytes / 1e6:.0f} MB "
          f"(params + AdamW moments, float32); 1 CPU device; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    state, _ = step_fn(state, batch)  # compile
    jax.block_until_ready(state)

    def steps(n: int) -> list[float]:
        nonlocal state
        times = []
        for _ in range(n):
            start = time.perf_counter()
            state, metrics = step_fn(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        return times

    loader_state = {"version": 1, "stream": {"position": 0, "offset": 0}, "setup": {}}
    base = steps(args.steps)
    checkpoint_reader.checksums(state)  # compile
    start = time.perf_counter()
    checkpoint_reader.checksums(state)
    checksum_s = time.perf_counter() - start

    results = {}
    for mode in ("sync", "async"):
        manager = ckpt.CheckpointManager(os.path.join(root, mode), make_config(args, root, mode == "async"))
        jax.block_until_ready(state)  # the blocked time below is the save's alone, not the last step's
        start = time.perf_counter()
        manager.save(int(state["step"]), state, loader_state)
        blocked = time.perf_counter() - start
        during = steps(args.steps) if mode == "async" else []
        start = time.perf_counter()
        manager.wait()
        results[mode] = {"blocked": blocked, "during": during, "left": time.perf_counter() - start}
        manager.close()

    # Restore: a fresh manager finds the latest checkpoint and places it; then one step.
    target = run.abstract()
    del state
    start = time.perf_counter()
    manager = ckpt.CheckpointManager(os.path.join(root, "async"), make_config(args, root, True))
    restored = manager.restore_latest(target)
    jax.block_until_ready(restored.state)
    restore_s = time.perf_counter() - start
    state = restored.state
    first = steps(1)[0]
    manager.close()

    sync, asyn = results["sync"], results["async"]
    mean = lambda xs: sum(xs) / len(xs)
    print()
    print(f"{'':32}{'sync':>10}{'async':>10}")
    print(f"{'loop blocked by save() (s)':32}{sync['blocked']:>10.3f}{asyn['blocked']:>10.3f}")
    print(f"{'checksums, one pass (s)':32}{'in save':>10}{'in bg':>10}")
    print(f"{'write finished after save() (s)':32}{0.0:>10.3f}{asyn['left'] + sum(asyn['during']):>10.3f}")
    print(f"{'train step, no save (s)':32}{mean(base):>10.3f}{mean(base):>10.3f}")
    print(f"{'train step while writing (s)':32}{'-':>10}{mean(asyn['during']):>10.3f}")
    ratio = asyn["blocked"] / sync["blocked"]
    print(f"\nasync stall / sync save = {ratio:.1%} (target <= 10%): {'ok' if ratio <= 0.10 else 'MISSED'}")
    extra = sum(asyn["during"]) - args.steps * mean(base)
    print(f"steps slowed by the background write: +{extra:.3f} s over {args.steps} steps "
          f"(async total cost {asyn['blocked'] + max(extra, 0):.3f} s vs sync {sync['blocked']:.3f} s)")
    print(f"checksums of the state (a pass over it, on the device): {checksum_s:.3f} s; async computes them "
          "while the loop goes on and the background write fetches them")
    print(f"restore latest checkpoint: {restore_s:.3f} s; first resumed step: {first:.3f} s "
          f"(restore to first step {restore_s + first:.3f} s, step already compiled)")


if __name__ == "__main__":
    main()
