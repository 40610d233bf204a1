"""Data throughput, side by side in one run.

    python benchmarks/data_throughput.py [--mb 8] [--workers N] [--tokenizer path/to/tokenizer.model]

Table 1 (tokenizer): MB/s of UTF-8 text per core for
  - SentencePiece's own `encode` on one core (the reference),
  - data_prep's encode stage (`RecordEncoder`: encode + EOS + uint16 record bytes) on one core,
  - the parallel stage (`EncoderPool`, started and warm) and the whole stage as the pipeline runs it
    (`write_shards`: pool start-up, encoding, ArrayRecord writing), total MB/s divided by the workers,
  - SentencePiece's own multi-threaded encode, likewise per thread,
with the ratio to the one-core reference (target: data_prep >= 0.8). Per core is shown two ways:
MB/s x cores from wall time (meaningful on an otherwise idle machine), and MB per CPU-second
used by all processes and threads (robust to other jobs on a shared machine). Every figure is the
best of --repeats runs, interleaved so that load from other jobs hits every row alike.
Table 2 (loader): benchmarks/loader_throughput.py at the demo's sequence length and batch.

Text: the demo corpus (pydoc topics and standard-library source), repeated up to --mb MB.
Tokenizer: --tokenizer, else a BPE model (--vocab-size) trained on that text here.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402

from data_prep import corpus, shards, tokenizer  # noqa: E402
from data_prep.config import TokenizerConfig  # noqa: E402
from jaxlm.data import format  # noqa: E402


def demo_texts(mb: float) -> list[str]:
    """Documents of the demo corpus, cycled until they hold `mb` MB of UTF-8 text."""
    docs = [text for _, text in corpus.pydoc_topics()]
    for rel in corpus.stdlib_files(max_bytes=4_000_000):
        with open(os.path.join(corpus.stdlib_dir(), rel), encoding="utf-8", errors="replace") as f:
            docs.append(f.read())
    docs = [d for d in docs if d]
    out, size, i = [], 0, 0
    while size < mb * 1e6:
        out.append(docs[i % len(docs)])
        size += len(out[-1].encode("utf-8"))
        i += 1
    return out


def tokenizer_model(args, texts: list[str], work: str) -> bytes:
    if args.tokenizer:
        with open(args.tokenizer, "rb") as f:
            return f.read()
    cfg = TokenizerConfig(vocab_size=args.vocab_size)
    sampler = tokenizer.SentenceSampler(cfg.input_sentence_size, cfg.max_sentence_length, seed=0)
    for text in texts[: len(texts) // 2]:
        sampler.add(text)
    path = os.path.join(work, "tokenizer.model")
    tokenizer.train(cfg, sampler, path, os.path.join(work, "tokenizer.log"), seed=0)
    with open(path, "rb") as f:
        return f.read()


def _cpu_seconds() -> float:
    """CPU time of this process and its threads, its finished children, and its running children (Linux)."""
    me, done = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + done.ru_utime + done.ru_stime
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except OSError:
            pass
    return total


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds used by this process, its threads and its worker processes)."""
    wall, used = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - wall, _cpu_seconds() - used


def tokenizer_throughput(args, texts: list[str], model_proto: bytes, work: str) -> list[tuple[str, int, float, float]]:
    """Rows of (what, cores, MB/s per core by wall time, MB per CPU second)."""
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    batches = [texts for _, texts in shards.batched((None, t) for t in texts)]  # the pipeline's batches
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    encoder = shards.RecordEncoder(model_proto, add_bos=False)
    dtype = format.token_dtype(sp.vocab_size())
    n = args.workers

    def sentencepiece_one_core():
        for b in batches:
            sp.encode(b, num_threads=1)

    def data_prep_one_core():
        for b in batches:
            encoder(b)

    pool = shards.EncoderPool(model_proto, False, n)
    for _ in pool.map((None, b) for b in batches[:n]):  # started and warm before timing
        pass

    def data_prep_parallel():  # steady state: the pool's start-up is timed separately below
        for _ in pool.map((None, b) for b in batches):
            pass

    def data_prep_with_shards():
        plan = [shards.GroupPlan("train", "bench", 0, 4, 4)]
        out = tempfile.mkdtemp(dir=work)
        os.makedirs(os.path.join(out, format.SHARD_DIR))
        shards.write_shards(plan, lambda split, source: ((str(i), t, None) for i, t in enumerate(texts)), out, dtype,
                            model_proto, False, n, lambda *record: None)

    def sentencepiece_threads():
        for b in batches:
            sp.encode(b, num_threads=n)

    # same token ids from both one-core paths, or the comparison is meaningless
    ids = sp.encode(batches[0][:8], add_eos=True)
    assert [np.frombuffer(r, dtype).tolist() for r, _, _ in encoder(batches[0][:8])] == ids

    rows = [("SentencePiece encode (reference)", 1, sentencepiece_one_core),
            ("data_prep encode stage", 1, data_prep_one_core),
            ("data_prep encode stage, process pool", n, data_prep_parallel),
            ("data_prep stage + pool start + shards", n, data_prep_with_shards),
            (f"SentencePiece encode, {n} threads", n, sentencepiece_threads)]
    times = {name: [] for name, _, _ in rows}
    for _ in range(args.repeats):  # interleaved: load from other jobs hits every row alike
        for name, _, fn in rows:
            times[name].append(_timed(fn))
    pool.close()
    # per core two ways: wall time x cores (what a dedicated machine shows), and CPU time actually
    # used (processes + threads + the pool's start-up), which other jobs on a shared machine cannot inflate
    return [(name, cores, mb / min(w for w, _ in times[name]) / cores, mb / min(c for _, c in times[name]))
            for name, cores, _ in rows]


def print_table(title: str, units: list[str], rows: list[tuple], reference: tuple | None = None) -> None:
    print(f"\n{title}")
    header = "".join(f"{u:>14}" + (f"{'ratio':>7}" if reference else "") for u in units)
    print(f"{'':<40}{'cores':>6}{header}")
    for name, cores, *values in rows:
        cells = ""
        for i, v in enumerate(values):
            cells += f"{v:>14.2f}" + (f"{v / reference[i]:>7.2f}" if reference else "")
        print(f"{name:<40}{cores:>6}{cells}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=8.0, help="MB of text to encode per measurement")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes / threads for the parallel rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", help="an existing SentencePiece model (default: train a BPE model here)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=128, help="loader rows (configs/demo.yaml: 128)")
    parser.add_argument("--batch-rows", type=int, default=16, help="loader batch (configs/demo.yaml: 16)")
    parser.add_argument("--trainer-metrics", help="a demo run's metrics.jsonl: the loader's rate is divided by the "
                        "median tokens_per_sec it recorded (without it, no ratio)")
    args = parser.parse_args(argv)
    texts = demo_texts(args.mb)
    with tempfile.TemporaryDirectory() as work:
        model_proto = tokenizer_model(args, texts, work)
        vocab = spm.SentencePieceProcessor(model_proto=model_proto).vocab_size()
        print(f"text: {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB in {len(texts)} documents; "
              f"tokenizer: {vocab} pieces; {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}; "
              f"best of {args.repeats}")
        rows = tokenizer_throughput(args, texts, model_proto, work)
    print_table("tokenizer encode throughput per core (MB of UTF-8 text)", ["MB/s x cores", "MB/CPU-s"], rows,
                reference=tuple(rows[0][2:]))
    for i, how in enumerate(("wall", "CPU")):
        ratios = {name: rows[r][2 + i] / rows[0][2 + i] for r, name in
                  ((1, "one core"), (2, "process pool"), (3, "whole stage with shards"))}
        print(f"data_prep / SentencePiece per core ({how} time), target >= 0.80: " + ", ".join(
            f"{name} {ratio:.2f} ({'met' if ratio >= 0.8 else 'MISSED'})" for name, ratio in ratios.items()))
    # Table 2: the loader at the demo's sequence length and batch, against what the demo trainer eats.
    from loader_throughput import loader_throughput, print_table as print_loader_table, trainer_demand
    print()
    demand = trainer_demand(args.trainer_metrics) if args.trainer_metrics else None
    print_loader_table(loader_throughput(seq_len=args.seq_len, batch_rows=args.batch_rows,
                                         demand_tokens_per_s=demand), args.trainer_metrics or "")


if __name__ == "__main__":
    main()
