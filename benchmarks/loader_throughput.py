"""Loader throughput: packed tokens per second out of `jaxlm.data.loader`, side by side per setup.

    python benchmarks/loader_throughput.py [--dataset DIR] [--seq-len 256] [--batch-rows 8] [--batches 300]
        [--trainer-metrics runs/demo/metrics.jsonl]

Without --dataset it writes a synthetic prepared dataset to a temporary folder (log-normal document
lengths around 500 tokens, a 32k vocabulary, 8 shards), so it runs anywhere. Each row builds a fresh
loader and times its first batch (start-up: opening shards, starting workers) apart from the steady
rate. With --trainer-metrics, the rate is also divided by what a real training run consumed: the
median `tokens_per_sec` that run logged (a recorded figure, from that run's machine and moment;
the table says so). Without it no ratio is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from array_record.python.array_record_module import ArrayRecordWriter  # noqa: E402

from jaxlm.data import format as fmt  # noqa: E402
from jaxlm.data.loader import build_loader  # noqa: E402


def write_synthetic_dataset(root: str, *, documents: int = 4000, vocab_size: int = 32000, shards: int = 8, seed: int = 0) -> str:
    """A prepared dataset per `jaxlm.data.format` with random tokens (train split only)."""
    rng = np.random.default_rng(seed)
    dtype = fmt.token_dtype(vocab_size)
    lengths = np.clip(rng.lognormal(np.log(400), 0.7, documents).astype(int), 1, 8000)
    os.makedirs(os.path.join(root, fmt.SHARD_DIR), exist_ok=True)
    bounds = np.linspace(0, documents, shards + 1).astype(int)
    entries = []
    for i in range(shards):
        rel = fmt.shard_name("train", i, shards)
        writer = ArrayRecordWriter(os.path.join(root, rel), "group_size:1")
        part = lengths[bounds[i] : bounds[i + 1]]
        for n in part:
            writer.write(fmt.encode_record(rng.integers(3, vocab_size, n), dtype))
        writer.close()
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        entries.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "records": len(part),
                        "tokens": int(part.sum()), "bytes": len(data)})
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "dtype": dtype.name,
        "tokenizer": {"path": fmt.TOKENIZER, "sha256": "synthetic", "vocab_size": vocab_size, "model_type": "bpe",
                      "bos_id": -1, "eos_id": 2, "pad_id": 0, "unk_id": 1},
        "sources": [{"name": "synthetic", "weight": 1.0}],
        "splits": {"train": {"documents": documents, "tokens": int(lengths.sum()), "shards": entries}},
        "stages": [],
        "compression": {},
    }
    with open(os.path.join(root, fmt.MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return root


def _measure(sources, *, seq_len, batch_rows, batches, **kw) -> dict:
    start = time.perf_counter()
    with build_loader(sources, seq_len=seq_len, batch_rows=batch_rows, **kw) as loader:
        next(loader)
        first = time.perf_counter()
        real = 0
        for _ in range(batches):
            real += int(np.count_nonzero(next(loader)["segment_ids"]))
        end = time.perf_counter()
    return {
        "startup_s": first - start,
        "tokens_per_s": batches * batch_rows * seq_len / (end - first),
        "real_fraction": real / (batches * batch_rows * seq_len),
    }


def trainer_demand(metrics_path: str) -> float:
    """The median tokens/s a training run logged in its metrics.jsonl."""
    with open(metrics_path, encoding="utf-8") as f:
        rates = [row["tokens_per_sec"] for row in map(json.loads, f) if row.get("tokens_per_sec")]
    if not rates:
        sys.exit(f"{metrics_path} has no tokens_per_sec rows: give a finished run's metrics.jsonl")
    return float(sorted(rates)[len(rates) // 2])


def loader_throughput(dataset: str | None = None, *, seq_len: int = 256, batch_rows: int = 8, batches: int = 300,
                      demand_tokens_per_s: float | None = None, worker_counts=(0, 2)) -> dict:
    """Tokens/s of packed batches for several loader setups; `x_demand` = rate / demand_tokens_per_s
    (None without a demand)."""
    with tempfile.TemporaryDirectory() as tmp:
        if dataset is None:
            dataset = write_synthetic_dataset(os.path.join(tmp, "a"))
            other = write_synthetic_dataset(os.path.join(tmp, "b"), documents=1500, seed=1)
        else:
            other = dataset  # a mixture of the dataset with itself still exercises the interleave
        setups = [(f"shuffled, {w} workers" if w else "shuffled, reader threads", [(dataset, 1.0)],
                   dict(shuffle=True, worker_count=w)) for w in worker_counts]
        setups += [
            ("in order (eval), reader threads", [(dataset, 1.0)], dict(shuffle=False, num_epochs=None)),
            ("mixture 0.7/0.3, reader threads", [(dataset, 0.7), (other, 0.3)], dict(shuffle=True)),
            ("shuffled, threads, no prefetch", [(dataset, 1.0)], dict(shuffle=True, prefetch=0)),
        ]
        rows = []
        for name, sources, kw in setups:
            result = _measure(sources, seq_len=seq_len, batch_rows=batch_rows, batches=batches, **kw)
            rows.append({"setup": name, **result,
                         "x_demand": result["tokens_per_s"] / demand_tokens_per_s if demand_tokens_per_s else None})
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "seq_len": seq_len,
        "batch_rows": batch_rows,
        "batches": batches,
        "demand_tokens_per_s": demand_tokens_per_s,
        "rows": rows,
    }


def print_table(result: dict, demand_source: str = "") -> None:
    print(f"loader throughput: seq_len {result['seq_len']}, {result['batch_rows']} rows/batch, "
          f"{result['batches']} batches; {result['machine']}")
    print(f"{'setup':34s} {'start-up s':>10s} {'tokens/s':>12s} {'x demand':>9s} {'real tok':>9s}")
    for r in result["rows"]:
        ratio = "-" if r["x_demand"] is None else f"{r['x_demand']:.1f}"
        print(f"{r['setup']:34s} {r['startup_s']:10.2f} {r['tokens_per_s']:12,.0f} {ratio:>9s} "
              f"{r['real_fraction']:9.1%}")
    if result["demand_tokens_per_s"]:
        print(f"(x demand = tokens/s / {result['demand_tokens_per_s']:,.0f} tokens/s, the median rate recorded in "
              f"{demand_source}: a recorded figure, not measured in this run; target >= 10)")
    else:
        print("(no x demand: give --trainer-metrics RUN/metrics.jsonl to divide by a run's recorded rate)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="a prepared dataset folder (default: synthetic)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-rows", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--trainer-metrics", help="a training run's metrics.jsonl: its median tokens_per_sec is "
                        "the demand the loader's rate is divided by")
    args = parser.parse_args(argv)
    demand = trainer_demand(args.trainer_metrics) if args.trainer_metrics else None
    print_table(loader_throughput(args.dataset, seq_len=args.seq_len, batch_rows=args.batch_rows,
                                  batches=args.batches, demand_tokens_per_s=demand), args.trainer_metrics or "")


if __name__ == "__main__":  # the guard matters: Grain worker processes re-import this module
    main()
