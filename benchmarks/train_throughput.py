"""Training throughput at a tiny llama config, and jaxlm's overhead against a hand-written step.

    python benchmarks/train_throughput.py [--steps 10] [--reps 5]

Config (the issue's): width 256, 4 heads of 64, MLP 1024, 2 layers, vocab 32,000, context 256,
batch 4, untied embeddings, synthetic tokens, no checkpointing, one device. Prints tokens/s in
float32 and bfloat16 compute, MFU against a matmul probe of this host, and two ratios of step
times measured in the same process:

- framework overhead: jaxlm's step at its default config (full logits, as the hand-written step
  computes them) over a minimal hand-written JAX step of the same model: identical numerics;
- the chunked loss's gain: jaxlm with `model.loss_chunk` (--loss-chunk) over jaxlm's default.

Variants run interleaved (A B C A B C ...) and medians are quoted, since shared machines drift.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.config import config_from_dict
from jaxlm.model.counting import flops_per_token
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train.metrics import measure_cpu_peak_flops
from jaxlm.train import setup

VOCAB, WIDTH, HEADS, HEAD_DIM, MLP, LAYERS, CONTEXT, BATCH = 32000, 256, 4, 64, 1024, 2, 256, 4


def jaxlm_config(dtype: str, loss_chunk: int):
    return config_from_dict({
        "data": {"seq_len": CONTEXT},
        "model": {"family": "llama", "vocab_size": VOCAB, "d_model": WIDTH, "n_heads": HEADS, "head_dim": HEAD_DIM,
                  "d_ff": MLP, "n_layers": LAYERS, "max_seq_len": CONTEXT, "tie_embeddings": False,
                  "dtype": dtype, "loss_chunk": loss_chunk},
        "train": {"steps": 1000, "global_batch": BATCH},
        "optim": {"lr": 3e-4, "schedule": {"name": "cosine", "warmup_steps": 10}},
        "mesh": {"data": 1},
    })


def synthetic_batch(seed=0, rows=BATCH, length=CONTEXT, vocab=VOCAB):
    tokens = np.random.default_rng(seed).integers(0, vocab, (rows, length + 1))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((rows, length)),
            "positions": np.broadcast_to(np.arange(length), (rows, length)), "loss_mask": np.ones((rows, length))}


def jaxlm_runner(dtype: str, loss_chunk: int):
    config = jaxlm_config(dtype, loss_chunk)
    run, spec = step_runner(config, synthetic_batch())
    return run, flops_per_token(config.model, config.data.seq_len)


def step_runner(config, batch: dict):
    """run(n): n of jaxlm's compiled train steps on one device, all on `batch` (one micro-batch)."""
    run = setup.build(config, mesh=build_mesh(config.mesh, jax.devices()[:1]))
    spec, state, step = run.spec, run.init(), run.train_step
    batch = {k: jnp.asarray(v, jnp.int32)[None] for k, v in batch.items()}
    holder = {"state": state}

    def run(n):
        for _ in range(n):
            holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)
    return run, spec


# ----------------------------------------------------------------------------------------------
# The same model written out by hand in plain JAX: the reference for framework overhead.

def handwritten_runner(dtype: str):
    cdt = jnp.dtype(dtype)
    keys = iter(jax.random.split(jax.random.key(0), 16))

    def normal(shape, std=0.02):
        return std * jax.random.normal(next(keys), shape, jnp.float32)

    params = {
        "embed": normal((VOCAB, WIDTH)), "unembed": normal((WIDTH, VOCAB)), "final_norm": jnp.ones((WIDTH,)),
        "attn_norm": jnp.ones((LAYERS, WIDTH)), "mlp_norm": jnp.ones((LAYERS, WIDTH)),
        "wq": normal((LAYERS, WIDTH, HEADS, HEAD_DIM)), "wk": normal((LAYERS, WIDTH, HEADS, HEAD_DIM)),
        "wv": normal((LAYERS, WIDTH, HEADS, HEAD_DIM)), "wo": normal((LAYERS, HEADS, HEAD_DIM, WIDTH)),
        "w_gate": normal((LAYERS, WIDTH, MLP)), "w_up": normal((LAYERS, WIDTH, MLP)), "w_down": normal((LAYERS, MLP, WIDTH)),
    }

    def rms(x, scale):
        x32 = x.astype(jnp.float32)
        return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-5) * scale).astype(cdt)

    def rope(x, pos):
        half = HEAD_DIM // 2
        angle = pos[..., None] * 10000.0 ** (-jnp.arange(half) / half)
        sin, cos = jnp.sin(angle)[:, :, None], jnp.cos(angle)[:, :, None]
        a, b = jnp.split(x.astype(jnp.float32), 2, -1)
        return jnp.concatenate([a * cos - b * sin, b * cos + a * sin], -1).astype(cdt)

    def loss_fn(p, tokens, targets):
        pos = jnp.arange(CONTEXT)[None].astype(jnp.float32)
        x = p["embed"][tokens].astype(cdt)
        for i in range(LAYERS):
            h = rms(x, p["attn_norm"][i])
            q = rope(jnp.einsum("btd,dnh->btnh", h, p["wq"][i].astype(cdt)), pos)
            k = rope(jnp.einsum("btd,dnh->btnh", h, p["wk"][i].astype(cdt)), pos)
            v = jnp.einsum("btd,dnh->btnh", h, p["wv"][i].astype(cdt))
            a = jax.nn.dot_product_attention(q, k, v, is_causal=True)
            x = x + jnp.einsum("btnh,nhd->btd", a, p["wo"][i].astype(cdt))
            h = rms(x, p["mlp_norm"][i])
            g = jax.nn.silu(h @ p["w_gate"][i].astype(cdt)) * (h @ p["w_up"][i].astype(cdt))
            x = x + g @ p["w_down"][i].astype(cdt)
        logits = jnp.dot(rms(x, p["final_norm"]), p["unembed"].astype(cdt), preferred_element_type=jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    batch = synthetic_batch()
    tokens, targets = jnp.asarray(batch["inputs"], jnp.int32), jnp.asarray(batch["targets"], jnp.int32)
    holder = {"params": params, "opt": opt_state}

    def run(n):
        for _ in range(n):
            holder["params"], holder["opt"], loss = step(holder["params"], holder["opt"], tokens, targets)
        jax.block_until_ready(loss)
    return run


def measure(runners: dict, steps: int, reps: int) -> dict[str, float]:
    for run in runners.values():
        run(2)  # compile and warm up
    times = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            start = time.perf_counter()
            run(steps)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--loss-chunk", type=int, default=256, help="model.loss_chunk of the chunked variant")
    args = parser.parse_args()

    tokens_per_step = BATCH * CONTEXT
    chunked = f"jaxlm, loss_chunk {args.loss_chunk}"
    rows = []
    for dtype in ("float32", "bfloat16"):
        default, fpt = jaxlm_runner(dtype, 0)
        times = measure({"jaxlm (default)": default, chunked: jaxlm_runner(dtype, args.loss_chunk)[0],
                         "hand-written": handwritten_runner(dtype)}, args.steps, args.reps)
        peak = measure_cpu_peak_flops(jnp.dtype(dtype))
        for name, seconds in times.items():
            tps = tokens_per_step / seconds
            rows.append((dtype, name, seconds * 1e3, tps, tps * fpt / peak))
        rows.append((dtype, "overhead: jaxlm (default) / hand-written", times["jaxlm (default)"] / times["hand-written"],
                     None, None))
        rows.append((dtype, "chunked loss: chunked / jaxlm (default)", times[chunked] / times["jaxlm (default)"],
                     None, None))

    print(f"\ndevice: {jax.devices()[0].device_kind}, {os.cpu_count()} cores; llama {LAYERS}x{WIDTH}, vocab {VOCAB}, "
          f"context {CONTEXT}, batch {BATCH}; medians of {args.reps} x {args.steps} steps")
    print(f"{'compute':10s} {'step':42s} {'ms/step':>9s} {'tokens/s':>9s} {'MFU':>6s}")
    for dtype, name, ms, tps, mfu in rows:
        if tps is None:
            print(f"{dtype:10s} {name:42s} {ms:9.3f}")
        else:
            print(f"{dtype:10s} {name:42s} {ms:9.1f} {tps:9.0f} {mfu:6.1%}")


if __name__ == "__main__":
    main()
