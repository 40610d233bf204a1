"""Data throughput, side by side in one run.

    python benchmarks/data_throughput.py [--mb 8] [--workers N] [--tokenizer path/to/tokenizer.model]

Table 1 (tokenizer): MB/s of UTF-8 text per core for
  - SentencePiece's own `encode` on one core (the reference),
  - data_prep's encode stage (`RecordEncoder`: encode + EOS + uint16 record bytes) on one core,
  - the parallel stage (`encode_batches` over a process pool) and the full stage that also writes
    ArrayRecord shards (`write_shards`), total MB/s divided by the worker count,
  - SentencePiece's own multi-threaded encode, likewise per thread,
with the ratio to the one-core reference (target: data_prep >= 0.8). Every figure is the best of
--repeats runs, the runs interleaved so that load from other jobs hits every row alike.
Table 2 (loader): `loader_throughput` below, filled by the loader's benchmark.

Text: the demo corpus (pydoc topics and standard-library source), repeated up to --mb MB.
Tokenizer: --tokenizer, else a BPE model (--vocab-size) trained on that text here.
"""

from __future__ import annotations

import argparse
import os
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


def _best_seconds(fn, repeats: int) -> list[float]:
    return [_timed(fn) for _ in range(repeats)]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def tokenizer_throughput(args, texts: list[str], model_proto: bytes, work: str) -> list[tuple[str, int, float]]:
    """Rows of (what, cores, MB/s per core)."""
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

    def data_prep_parallel():
        for _ in shards.encode_batches(((None, b) for b in batches), model_proto, False, n):
            pass

    def data_prep_with_shards():
        plan = [shards.GroupPlan("train", "bench", 0, 4, 4)]
        out = tempfile.mkdtemp(dir=work)
        os.makedirs(os.path.join(out, format.SHARD_DIR))
        shards.write_shards(plan, lambda split, source: ((str(i), t) for i, t in enumerate(texts)), out, dtype,
                            model_proto, False, n, lambda *record: None)

    def sentencepiece_threads():
        for b in batches:
            sp.encode(b, num_threads=n)

    # same token ids from both one-core paths, or the comparison is meaningless
    ids = sp.encode(batches[0][:8], add_eos=True)
    assert [np.frombuffer(r, dtype).tolist() for r, _ in encoder(batches[0][:8])] == ids

    rows = [("SentencePiece encode (reference)", 1, sentencepiece_one_core),
            ("data_prep encode stage", 1, data_prep_one_core),
            ("data_prep encode stage, process pool", n, data_prep_parallel),
            ("  + writing ArrayRecord shards", n, data_prep_with_shards),
            (f"SentencePiece encode, {n} threads", n, sentencepiece_threads)]
    times = {name: [] for name, _, _ in rows}
    for _ in range(args.repeats):  # interleaved: load from other jobs hits every row alike
        for name, _, fn in rows:
            times[name].append(_timed(fn))
    return [(name, cores, mb / min(times[name]) / cores) for name, cores, _ in rows]


def loader_throughput(args) -> list[tuple[str, int, float]] | None:
    """SLOT for the loader benchmark (jaxlm.data): rows of (what, cores, value) for the second table.

    Owned by the loader's author; returns None until filled.
    """
    return None


def print_table(title: str, unit: str, rows: list[tuple[str, int, float]], reference: float | None = None) -> None:
    print(f"\n{title}")
    print(f"{'':<42}{'cores':>6}{unit:>16}{'ratio':>8}")
    for name, cores, value in rows:
        ratio = f"{value / reference:>8.2f}" if reference else ""
        print(f"{name:<42}{cores:>6}{value:>16.2f}{ratio}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=8.0, help="MB of text to encode per measurement")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes / threads for the parallel rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", help="an existing SentencePiece model (default: train a BPE model here)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args(argv)
    texts = demo_texts(args.mb)
    with tempfile.TemporaryDirectory() as work:
        model_proto = tokenizer_model(args, texts, work)
        vocab = spm.SentencePieceProcessor(model_proto=model_proto).vocab_size()
        print(f"text: {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB in {len(texts)} documents; "
              f"tokenizer: {vocab} pieces; {os.cpu_count()} CPUs visible, best of {args.repeats}")
        rows = tokenizer_throughput(args, texts, model_proto, work)
    print_table("tokenizer encode throughput (MB of text per second per core)", "MB/s/core", rows, reference=rows[0][2])
    print(f"data_prep / SentencePiece per core: one core {rows[1][2] / rows[0][2]:.2f}, "
          f"process pool {rows[2][2] / rows[0][2]:.2f}, with shard writing {rows[3][2] / rows[0][2]:.2f} (target >= 0.80)")
    loader_rows = loader_throughput(args)
    if loader_rows:
        print_table("loader throughput", "value", loader_rows)


if __name__ == "__main__":
    main()
