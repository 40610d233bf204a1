"""The Tiny Shakespeare race's train step: jaxlm's against a minimal hand-written JAX step.

    python benchmarks/race_step.py [--steps 50] [--reps 5]

Both run the race recipe's model and optimizer (configs/shakespeare_char.yaml: gpt2 family, 4
layers, 128 wide, 4 heads, context 64, batch 12, vocab 72, tied embeddings, AdamW with clipping)
on synthetic batches in one process, interleaved, in two variants: float32, and float32
activations with the layers' matmul operands in bfloat16 (float32 accumulation). The hand-written
step is what plain JAX gives: layers scanned and rematerialised (its fastest plain form here;
without remat, or unrolled, it was slower). 2,000 of its steps bound what any JAX trainer of this
shape could reach on this host before start-up and evaluation are counted.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import load_config
from train_throughput import measure, step_runner, synthetic_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "shakespeare_char.yaml")
RACE_STEPS = 2000


def race_batch(config) -> dict:
    return synthetic_batch(rows=config.train.global_batch, length=config.data.seq_len, vocab=config.model.vocab_size)


def jaxlm_runner(overrides: list[str]):
    config = load_config(CONFIG, overrides)
    return step_runner(config, race_batch(config))[0]


# ----------------------------------------------------------------------------------------------
# The same model and optimizer written out by hand in plain JAX.

def handwritten_runner(matmul_dtype: str):
    config = load_config(CONFIG, [])
    m, o = config.model, config.optim
    d, n_layers, heads, length, vocab = m.d_model, m.n_layers, m.n_heads, config.data.seq_len, m.vocab_size
    low = jnp.dtype(matmul_dtype)
    keys = iter(jax.random.split(jax.random.key(0), 8))

    def normal(shape, std=0.02):
        return std * jax.random.normal(next(keys), shape, jnp.float32)

    out_std = 0.02 / (2 * n_layers) ** 0.5  # GPT-2's scaled init of the residual projections
    params = {
        "wte": normal((vocab, d)), "wpe": normal((length, d)),
        "lnf": jnp.ones((d,)), "lnf_b": jnp.zeros((d,)),
        "layers": {
            "ln1": jnp.ones((n_layers, d)), "ln1_b": jnp.zeros((n_layers, d)),
            "ln2": jnp.ones((n_layers, d)), "ln2_b": jnp.zeros((n_layers, d)),
            "qkv": normal((n_layers, d, 3 * d)), "qkv_b": jnp.zeros((n_layers, 3 * d)),
            "proj": normal((n_layers, d, d), out_std), "proj_b": jnp.zeros((n_layers, d)),
            "up": normal((n_layers, d, 4 * d)), "up_b": jnp.zeros((n_layers, 4 * d)),
            "down": normal((n_layers, 4 * d, d), out_std), "down_b": jnp.zeros((n_layers, d)),
        },
    }

    def layer_norm(x, scale, bias):
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias

    def dense(x, w, b):
        return jnp.dot(x.astype(low), w.astype(low), preferred_element_type=jnp.float32) + b

    causal = jnp.tril(jnp.ones((length, length), bool))

    def block(x, p):
        rows = x.shape[0]
        q, k, v = jnp.split(dense(layer_norm(x, p["ln1"], p["ln1_b"]), p["qkv"], p["qkv_b"]), 3, axis=-1)
        q, k, v = (t.reshape(rows, length, heads, d // heads).transpose(0, 2, 1, 3) for t in (q, k, v))
        scores = jnp.einsum("bhtc,bhsc->bhts", q, k) * (d // heads) ** -0.5
        probs = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
        attn = jnp.einsum("bhts,bhsc->bhtc", probs, v).transpose(0, 2, 1, 3).reshape(rows, length, d)
        x = x + dense(attn, p["proj"], p["proj_b"])
        h = jax.nn.gelu(dense(layer_norm(x, p["ln2"], p["ln2_b"]), p["up"], p["up_b"]))
        return x + dense(h, p["down"], p["down_b"]), None

    def loss_fn(p, tokens, targets):
        x = p["wte"][tokens] + p["wpe"][None]
        x, _ = jax.lax.scan(jax.checkpoint(block), x, p["layers"])
        logits = layer_norm(x, p["lnf"], p["lnf_b"]) @ p["wte"].T
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.schedule.warmup_steps, config.train.steps,
                                                  o.lr * o.schedule.min_lr_ratio)
    optimizer = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                            optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))

    def step(params, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    batch = race_batch(config)
    inputs, targets = jnp.asarray(batch["inputs"], jnp.int32), jnp.asarray(batch["targets"], jnp.int32)
    holder = {"params": params, "opt": optimizer.init(params)}

    def run(n):
        for _ in range(n):
            holder["params"], holder["opt"], loss = step(holder["params"], holder["opt"], inputs, targets)
        jax.block_until_ready(loss)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    print(f"{'operands':10s} {'step':14s} {'ms/step':>8s} {f'{RACE_STEPS} steps':>12s} {'vs hand-written':>16s}")
    for dtype, overrides in (("float32", []), ("bfloat16", ["model.matmul_dtype=bfloat16"])):
        times = measure({"jaxlm": jaxlm_runner(overrides), "hand-written": handwritten_runner(dtype)},
                        args.steps, args.reps)
        for name, seconds in times.items():
            print(f"{dtype:10s} {name:14s} {seconds * 1e3:8.1f} {seconds * RACE_STEPS:10.1f} s "
                  f"{seconds / times['hand-written']:15.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
