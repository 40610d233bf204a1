"""Output steering's cost in generation tokens/s, side by side with unsteered generation.

  python benchmarks/steering.py [--words 20] [--new-tokens 128] [--batch 8] [--repeats 3]

A random llama-family model with Llama 2's SentencePiece vocabulary (32,000 pieces, from
../shared/data/tokenizers/llama2, or --tokenizer), sampled at temperature 1 from 32-token prompts.
Steering bans the first --words entries of the LDNOOBW English list (../shared/data/bias/ldnoobw/en,
or --words-file) and biases one word. Runs alternate (unsteered, steered) --repeats times after a
compile call each; the table gives medians and the steered/unsteered ratio, plus the one-off cost of
building the ban tables. EOS is never drawn, so every row makes --new-tokens tokens.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.steering import Steering, tables
from jaxlm.eval.tokenizer import Tokenizer
from jaxlm.model import Transformer

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=os.path.join(SHARED, "tokenizers", "llama2", "tokenizer.model"))
    p.add_argument("--words-file", default=os.path.join(SHARED, "bias", "ldnoobw", "en"))
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    for path in (args.tokenizer, args.words_file):
        if not os.path.isfile(path):
            print(f"error: {path} not found; pass --tokenizer / --words-file", file=sys.stderr)
            return 2
    tok = Tokenizer(args.tokenizer)
    with open(args.words_file, encoding="utf-8") as f:
        words = [w.strip() for w in f if w.strip()][:args.words]
    window = 32 + args.new_tokens
    cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, d_model=args.d_model, n_layers=args.layers,
                      n_heads=4, n_kv_heads=2, max_seq_len=window, init_std=0.02)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model))
    steering = Steering(banned=tuple(words), word_bias=(("the", -2.0),))
    start = time.perf_counter()
    nxt, hit, _ = tables(tok, steering)
    build = time.perf_counter() - start
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, tok.vocab_size, 32).tolist() for _ in range(args.batch)]
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    gens = {"unsteered": Generator(graphdef, params, window, batch_size=args.batch, tokenizer=tok, eos_id=-5),
            "steered": Generator(graphdef, params, window, batch_size=args.batch, tokenizer=tok, eos_id=-5,
                                 steering=steering)}
    times = {k: [] for k in gens}
    for gen in gens.values():
        gen.generate_ids(prompts, sampling)  # compile
    for _ in range(args.repeats):
        for name, gen in gens.items():
            t0 = time.perf_counter()
            gen.generate_ids(prompts, sampling)
            times[name].append(time.perf_counter() - t0)
    load = os.getloadavg()[0]
    print(f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), load {load:.1f}; "
          f"llama d={args.d_model} layers={args.layers} vocab={tok.vocab_size}; batch {args.batch} x "
          f"{args.new_tokens} new tokens; {len(words)} banned strings -> {nxt.shape[0]} states, tables "
          f"{(nxt.nbytes + hit.nbytes) / 2**20:.1f} MiB built in {build:.2f} s")
    tokens = args.batch * args.new_tokens
    base = statistics.median(times["unsteered"])
    print(f"{'mode':10s} {'median s':>9s} {'tokens/s':>9s} {'vs unsteered':>13s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:10s} {m:9.3f} {tokens / m:9.1f} {m / base:12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
