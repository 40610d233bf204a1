"""Generation throughput with and without the KV cache, side by side.

  python benchmarks/generation.py [--new-tokens 512] [--batch 1] [--d-model 128] [--layers 4]

(--batch 1,8 adds batched rows; its recompute baseline takes minutes on a 2-core CPU.)

Both modes run the same compiled while-loop (jaxlm.eval.generate); without the cache every step
recomputes the whole sequence so far, which is what a model without incremental decoding does.
A random llama-family model (the demo's shape by default); greedy decoding, no EOS, so every row
generates exactly --new-tokens tokens. Compilation is excluded (one warm-up call per shape). The
two modes must produce the same tokens; the table says whether they did.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.model import Transformer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    window = args.prompt_tokens + args.new_tokens
    cfg = ModelConfig(family="llama", vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                      n_heads=4, n_kv_heads=2, max_seq_len=window, init_std=0.2)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), "
          f"model: llama d={args.d_model} layers={args.layers} vocab={args.vocab} ({n_params / 1e6:.2f}M params), "
          f"prompt {args.prompt_tokens} + {args.new_tokens} new tokens, greedy")
    sampling = SamplingConfig(max_new_tokens=args.new_tokens)
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        rng = np.random.default_rng(batch)
        prompts = [rng.integers(0, args.vocab, args.prompt_tokens).tolist() for _ in range(batch)]
        gen = Generator(graphdef, params, window, batch_size=batch)
        timings, outputs = {}, {}
        for use_cache in (True, False):
            gen.generate_ids(prompts, sampling, use_cache=use_cache)  # compile
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = gen.generate_ids(prompts, sampling, use_cache=use_cache)
                best = min(best, time.perf_counter() - start)
            timings[use_cache], outputs[use_cache] = best, [o.tokens for o in out]
        same = outputs[True] == outputs[False]
        for use_cache in (True, False):
            tokens = batch * args.new_tokens
            rows.append((("kv cache" if use_cache else "recompute"), batch, timings[use_cache],
                         tokens / timings[use_cache], timings[False] / timings[use_cache], same))
    print(f"{'mode':10s} {'batch':>5s} {'seconds':>9s} {'tokens/s':>10s} {'speedup':>8s}  same tokens")
    for mode, batch, secs, tps, speedup, same in rows:
        print(f"{mode:10s} {batch:5d} {secs:9.2f} {tps:10.1f} {speedup:7.1f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
