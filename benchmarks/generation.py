"""Generation throughput with and without the KV cache, side by side.

  python benchmarks/generation.py [--new-tokens 512] [--batch 1] [--d-model 128] [--layers 4]

(--batch 1,8 adds batched rows; its recompute baseline takes minutes on a 2-core CPU.)

The KV-cache mode is jaxlm's Generator (one compiled while-loop). The baseline is what a model
without incremental decoding does: each new token runs the model over the sequence generated so
far, and only that. Shapes must be static under jit, so the prefix is padded up to a multiple of
--bucket tokens (causal attention keeps the padding from changing the result); each bucket's
steps run in one compiled loop, so neither mode pays Python dispatch per token. The padding makes
the baseline do slightly more work than the bare prefix: the table prints that excess, and
--bucket 1 removes it (one compile per length). A random llama-family model (the demo's shape by
default); greedy decoding, no EOS, so every row generates exactly --new-tokens tokens.
Compilation is excluded (one warm-up pass). The two modes must produce the same tokens; the table
says whether they did.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.model import Transformer


def prefix_recompute(graphdef, params, prompts_BP: np.ndarray, new_tokens: int, bucket: int):
    """Greedy tokens (B, new_tokens), each from the model run over the sequence so far (padded up to
    a multiple of `bucket`), and the work done relative to the bare prefixes."""
    b, p = prompts_BP.shape
    s = p + new_tokens

    def steps(params, buf_BS, lo, hi, *, width):
        model = nnx.merge(graphdef, params)
        positions = jnp.broadcast_to(jnp.arange(width), (b, width))
        segments = jnp.ones((b, width), jnp.int32)

        def body(length, buf):  # the first `length` tokens are known; predict token `length`
            h_BWD = model.hidden(buf[:, :width], positions, segments)
            h_BD = jax.lax.dynamic_index_in_dim(h_BWD, length - 1, axis=1, keepdims=False)
            logits = jnp.einsum("bd,dv->bv", h_BD, model.unembedding(), preferred_element_type=jnp.float32)
            return jax.lax.dynamic_update_slice_in_dim(buf, jnp.argmax(logits, -1)[:, None].astype(buf.dtype),
                                                       length, axis=1)
        return jax.lax.fori_loop(lo, hi, body, buf_BS)

    step_fn = jax.jit(steps, static_argnames="width")
    groups: dict[int, list[int]] = {}
    for length in range(p, s):
        groups.setdefault(min(s, -(-length // bucket) * bucket), []).append(length)

    def run():
        buf = jnp.zeros((b, s), jnp.int32).at[:, :p].set(prompts_BP)
        for width, lengths in groups.items():
            buf = step_fn(params, buf, lengths[0], lengths[-1] + 1, width=width)
        return np.asarray(jax.device_get(buf))[:, p:]

    excess = sum(w * len(ls) for w, ls in groups.items()) / sum(range(p, s)) - 1
    return run, excess


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--bucket", type=int, default=16, help="the baseline pads its prefix to a multiple of this")
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
        baseline, excess = prefix_recompute(graphdef, params, np.asarray(prompts, np.int32), args.new_tokens,
                                            args.bucket)
        modes = {"kv cache": lambda: [o.tokens for o in gen.generate_ids(prompts, sampling)],
                 "recompute": lambda: baseline().tolist()}
        timings, outputs = {}, {}
        for name, fn in modes.items():
            fn()  # compile
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = fn()
                best = min(best, time.perf_counter() - start)
            timings[name], outputs[name] = best, out
        same = outputs["kv cache"] == outputs["recompute"]
        for name in modes:
            tokens = batch * args.new_tokens
            rows.append((name, batch, timings[name], tokens / timings[name],
                         timings["recompute"] / timings[name], same))
        print(f"batch {batch}: the baseline's prefixes padded to multiples of {args.bucket} do {excess:.1%} more "
              f"token positions than the bare prefixes")
    print(f"{'mode':10s} {'batch':>5s} {'seconds':>9s} {'tokens/s':>10s} {'speedup':>8s}  same tokens")
    for mode, batch, secs, tps, speedup, same in rows:
        print(f"{mode:10s} {batch:5d} {secs:9.2f} {tps:10.1f} {speedup:7.1f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
