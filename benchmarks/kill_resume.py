"""Kill a training process at random moments, restart it, and check nothing is lost or changed.

    python benchmarks/kill_resume.py [--trials 20] [--steps 40] [--every 5] [--seed 0]

A tiny llama trains on a synthetic learnable dataset on 8 CPU devices (`python -m jaxlm.main`, as
a user runs it). One uninterrupted run gives the reference losses. Each trial starts the same run
in a fresh workdir, SIGKILLs it at a uniformly random moment between the end of its first step
and the end of the run (as long as training took in the reference), starts it again and lets it
finish. Per trial the table shows
the step the kill came after, the checkpoint the restart resumed from, the steps lost (redone)
and whether the kill hit a checkpoint write; then the losses of every step and every evaluation
are compared with the reference: mismatches must be 0. Steps lost are at most the save interval,
plus the steps that ran while a background write was in flight when the kill hit it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
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


def write_config(path: str, workdir: str, dataset: str, steps: int, every: int) -> str:
    config = {
        "workdir": workdir,
        "data": {"sources": [{"path": dataset}], "seq_len": 16},
        "model": {"vocab_size": VOCAB, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 32},
        "mesh": {"data": 4, "fsdp": 2},
        "train": {"steps": steps, "global_batch": 8, "log_every": 1, "eval_every": 10, "eval_batches": 2,
                  "peak_flops": 1e9},
        "optim": {"lr": 1e-2, "schedule": {"warmup_steps": 2}},
        "log": {"progress": False, "tensorboard": False},
        "checkpoint": {"every_steps": every, "keep_last": 3, "every_minutes": 0},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=5, help="checkpoint.every_steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="kill_resume_")
    try:
        dataset = write_dataset(os.path.join(root, "data"))
        runner = Runner(root)
        ref_dir = os.path.join(root, "reference")
        ref_config = write_config(os.path.join(root, "reference.yaml"), ref_dir, dataset, args.steps, args.every)
        _, cold = runner.run(ref_config)
        reference = losses(ref_dir)
        shutil.rmtree(ref_dir)
        first, warm = runner.run(ref_config, ref_dir)  # compiled programs now come from the cache, like every trial's
        if losses(ref_dir) != reference:
            raise SystemExit("two uninterrupted runs differ: the comparison below would mean nothing")
        print(f"reference: {args.steps} steps, checkpoint every {args.every}; a run takes {warm:.1f} s, its first "
              f"step ends at {first:.1f} s ({cold:.1f} s with compiling); {len(reference)} losses compared per trial")
        print(f"8 CPU devices, {os.cpu_count()} cores\n")
        print(f"{'trial':>5} {'kill at (s)':>11} {'after step':>10} {'resumed from':>12} {'steps lost':>10} "
              f"{'mid-write':>9} {'mismatches':>10}")
        worst, total_mismatches, mid_writes = 0, 0, 0
        for trial in range(args.trials):
            workdir = os.path.join(root, f"trial{trial}")
            config = write_config(os.path.join(root, f"trial{trial}.yaml"), workdir, dataset, args.steps, args.every)
            proc = runner.start(config)
            started = time.monotonic()
            while last_step(workdir) < 1 and proc.poll() is None:  # start-up times vary with the load
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, warm - first))
            delay = time.monotonic() - started
            checkpoints = os.path.join(workdir, "checkpoints")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
            mid_write = any(n.endswith(".orbax-checkpoint-tmp") for n in names)
            killed_after = last_step(workdir)
            runner.run(config)
            restores = [i["step"] for i in read_jsonl(os.path.join(workdir, "incidents.jsonl"))
                        if i["kind"] == "restore"]
            resumed = restores[-1] if restores else 0
            got = losses(workdir)
            mismatches = sum(got.get(k) != v for k, v in reference.items()) + len(set(got) - set(reference))
            lost = max(killed_after - resumed, 0)
            worst, total_mismatches, mid_writes = max(worst, lost), total_mismatches + mismatches, mid_writes + mid_write
            print(f"{trial:>5} {delay:>11.2f} {killed_after:>10} {resumed:>12} {lost:>10} "
                  f"{'yes' if mid_write else '':>9} {mismatches:>10}", flush=True)
        print(f"\nsteps lost: at most {worst} (save interval {args.every}); kills during a checkpoint write: "
              f"{mid_writes}; loss mismatches against the uninterrupted run: {total_mismatches} "
              f"({'ok' if total_mismatches == 0 else 'FAILED'})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
