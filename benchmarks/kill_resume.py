"""Kill a training process at random moments, restart it, and check nothing is lost or changed.

    python benchmarks/kill_resume.py [--trials 20] [--steps 40] [--every 5] [--seed 0] [--modes async,sync]

A tiny llama trains on a synthetic learnable dataset on 8 CPU devices (`python -m jaxlm.main`, as
a user runs it). One uninterrupted run gives the reference losses. Each trial starts the same run
in a fresh workdir, SIGKILLs it at a random moment (after a uniformly drawn step, a random part
of a step later), starts it again and lets it finish. Per trial the table shows
the step the kill came after, the checkpoint the restart resumed from, the steps lost (redone)
and whether the kill hit a checkpoint write; then the losses of every step and every evaluation
are compared with the reference: mismatches must be 0.

Both save modes run, one after the other in the same invocation. With synchronous saves
(`checkpoint.async_save: false`) a kill loses at most the save interval. With background saves no
schedule can promise that: a kill right after the save of step k was started, before it committed,
falls back to step k - interval, so it loses interval + (steps run while that write was in flight).
The async table therefore checks each trial against that bound, and reports how often a kill hit a
write at all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from array_record.python.array_record_module import ArrayRecordWriter  # noqa: E402

from jaxlm.data import format as fmt  # noqa: E402

VOCAB = 96


def write_dataset(root: str, seed: int = 0) -> str:
    """Documents where each token is the previous one plus 7 (mod the vocabulary): learnable in a few steps."""
    rng = np.random.default_rng(seed)
    dtype = fmt.token_dtype(VOCAB)
    os.makedirs(os.path.join(root, fmt.SHARD_DIR), exist_ok=True)
    splits = {}
    for split, count in (("train", 400), ("val", 20)):
        rel = fmt.shard_name(split, 0, 1)
        writer = ArrayRecordWriter(os.path.join(root, rel), "group_size:1")
        tokens = 0
        for length in rng.integers(8, 60, count):
            doc = 3 + (rng.integers(0, VOCAB - 3) + 7 * np.arange(length)) % (VOCAB - 3)
            doc[-1] = 2
            writer.write(fmt.encode_record(doc, dtype))
            tokens += int(length)
        writer.close()
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        splits[split] = {"documents": count, "tokens": tokens, "shards": [
            {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "records": count, "tokens": tokens,
             "bytes": len(data)}]}
    manifest = {
        "format_version": fmt.FORMAT_VERSION, "dtype": dtype.name,
        "tokenizer": {"path": fmt.TOKENIZER, "sha256": "synthetic", "vocab_size": VOCAB, "model_type": "bpe",
                      "bos_id": -1, "eos_id": 2, "pad_id": 0, "unk_id": 1},
        "sources": [{"name": "plus7", "weight": 1.0}], "splits": splits, "stages": [], "compression": {},
    }
    with open(os.path.join(root, fmt.MANIFEST), "w") as f:
        json.dump(manifest, f)
    return root


def write_config(path: str, workdir: str, dataset: str, steps: int, every: int, async_save: bool) -> str:
    config = {
        "workdir": workdir,
        "data": {"sources": [{"path": dataset}], "seq_len": 16},
        "model": {"vocab_size": VOCAB, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 32},
        "mesh": {"data": 4, "fsdp": 2},
        "train": {"steps": steps, "global_batch": 8, "log_every": 1, "eval_every": 10, "eval_batches": 2,
                  "peak_flops": 1e9},
        "optim": {"lr": 1e-2, "schedule": {"warmup_steps": 2}},
        "log": {"progress": False, "tensorboard": False},
        "checkpoint": {"every_steps": every, "keep_last": 3, "every_minutes": 0, "async_save": async_save},
    }
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


class Runner:
    def __init__(self, root: str):
        self.env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
                        JAX_COMPILATION_CACHE_DIR=os.path.join(root, "jax_cache"),
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def start(self, config: str) -> subprocess.Popen:
        log = open(config + ".log", "a")
        proc = subprocess.Popen([sys.executable, "-m", "jaxlm.main", "--config", config], cwd=REPO, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return proc

    def run(self, config: str, workdir: str = "") -> tuple[float, float]:
        """Runs to the end; (seconds until the first step was logged, seconds in all)."""
        start, first = time.monotonic(), None
        proc = self.start(config)
        while proc.poll() is None:
            if first is None and workdir and last_step(workdir) >= 1:
                first = time.monotonic() - start
            time.sleep(0.01)
        if proc.returncode != 0:
            with open(config + ".log") as f:
                raise SystemExit(f"training exited with {proc.returncode}:\n{f.read()[-3000:]}")
        total = time.monotonic() - start
        return (total if first is None else first), total


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the kill
                pass
    return out


def losses(workdir: str) -> dict:
    out = {}
    for m in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        if "loss" in m:
            out[m["step"]] = m["loss"]
        if "val_loss" in m:
            out[("val", m["step"])] = m["val_loss"]
    return out


def last_step(workdir: str) -> int:
    return max([m["step"] for m in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in m], default=0)


def _inflight_step(checkpoints: str) -> int | None:
    """The step of the checkpoint whose write a kill cut short, if any (Orbax's unfinished folder)."""
    names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    steps = [int(m.group(1)) for n in names if (m := re.fullmatch(r"(\d+)\.orbax-checkpoint-tmp.*", n))]
    return max(steps, default=None)


def run_trials(mode: str, args, runner: Runner, root: str, dataset: str, rng: random.Random) -> dict:
    """`args.trials` kills and restarts with one save mode; prints a table, returns the summary."""
    async_save = mode == "async"
    ref_dir = os.path.join(root, f"reference_{mode}")
    ref_config = write_config(os.path.join(root, f"reference_{mode}.yaml"), ref_dir, dataset, args.steps,
                              args.every, async_save)
    _, cold = runner.run(ref_config)
    reference = losses(ref_dir)
    shutil.rmtree(ref_dir)
    first, warm = runner.run(ref_config, ref_dir)  # compiled programs now come from the cache, like every trial's
    if losses(ref_dir) != reference:
        raise SystemExit("two uninterrupted runs differ: the comparison below would mean nothing")
    print(f"\n== {mode} saves: {args.steps} steps, checkpoint every {args.every}; a run takes {warm:.1f} s, its first "
          f"step ends at {first:.1f} s ({cold:.1f} s with compiling); {len(reference)} losses compared per trial")
    print(f"{'trial':>5} {'kill at (s)':>11} {'after step':>10} {'resumed from':>12} {'steps lost':>10} "
          f"{'write cut':>9} {'bound':>5} {'mismatches':>10}")
    summary = {"worst": 0, "mismatches": 0, "cut_writes": 0, "over_bound": 0}
    for trial in range(args.trials):
        workdir = os.path.join(root, f"{mode}_trial{trial}")
        config = write_config(os.path.join(root, f"{mode}_trial{trial}.yaml"), workdir, dataset, args.steps,
                              args.every, async_save)
        # A random step, then a random moment within a step: the load changes how long a run
        # takes, so a moment drawn in seconds could fall after the end.
        target, within = rng.randint(1, args.steps - 1), rng.uniform(0.0, (warm - first) / args.steps)
        proc = runner.start(config)
        started = time.monotonic()
        while last_step(workdir) < target and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(within)
        delay = time.monotonic() - started
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cut = _inflight_step(os.path.join(workdir, "checkpoints"))
        killed_after = last_step(workdir)
        runner.run(config)
        restores = [i["step"] for i in read_jsonl(os.path.join(workdir, "incidents.jsonl"))
                    if i["kind"] == "restore"]
        resumed = restores[-1] if restores else 0
        got = losses(workdir)
        mismatches = sum(got.get(k) != v for k, v in reference.items()) + len(set(got) - set(reference))
        lost = max(killed_after - resumed, 0)
        # A cut background write adds the steps that ran while it was in flight (see the docstring).
        bound = args.every + (killed_after - cut if cut is not None and async_save else 0)
        summary["worst"] = max(summary["worst"], lost)
        summary["mismatches"] += mismatches
        summary["cut_writes"] += cut is not None
        summary["over_bound"] += lost > bound
        print(f"{trial:>5} {delay:>11.2f} {killed_after:>10} {resumed:>12} {lost:>10} "
              f"{'' if cut is None else f'step {cut}':>9} {bound:>5} {mismatches:>10}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="kills per save mode")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=5, help="checkpoint.every_steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="async,sync", help="save modes to run: async, sync or both")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"async", "sync"}:
        raise SystemExit(f"--modes takes async, sync or async,sync; got {args.modes!r}")
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="kill_resume_")
    try:
        dataset = write_dataset(os.path.join(root, "data"))
        runner = Runner(root)
        print(f"8 CPU devices, {os.cpu_count()} cores")
        results = {mode: run_trials(mode, args, runner, root, dataset, rng) for mode in modes}
        print(f"\n{'saves':>6} {'trials':>6} {'most steps lost':>15} {'interval':>8} {'writes cut':>10} "
              f"{'over bound':>10} {'loss mismatches':>15}")
        ok = True
        for mode, r in results.items():
            print(f"{mode:>6} {args.trials:>6} {r['worst']:>15} {args.every:>8} {r['cut_writes']:>10} "
                  f"{r['over_bound']:>10} {r['mismatches']:>15}")
            ok &= r["mismatches"] == 0 and r["over_bound"] == 0
        print("ok" if ok else "FAILED: a loss differs from the uninterrupted run or a kill lost more than its bound")
        if not ok:
            raise SystemExit(1)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
