"""LoRA against full fine-tuning on the same model: optimizer-state bytes and train-step time.

    python benchmarks/lora.py [--d-model 256] [--layers 4] [--rank 8] [--targets q,k,v,o,up,gate,down]
                              [--batch 4] [--seq-len 128] [--steps 5]

Both steps are built here the plain way, side by side in one process: `jax.value_and_grad` of the
next-token loss, then an Optax update from jaxlm.train.optimizer.make_optimizer (AdamW), jitted.
Full fine-tuning differentiates and updates every parameter. LoRA differentiates only the
adapters (the base weights enter the loss as constants) and its optimizer is built on the
adapters alone; the state it holds is checked to be what only_trainable(...) keeps on the whole
tree. Times are medians of --steps steps after one compile step; the table prints the load
average of the machine (a shared CPU slows both alike, so compare the ratios).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import optax
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlm.config import OptimConfig, config_from_dict  # noqa: E402
from jaxlm.model import Transformer  # noqa: E402
from jaxlm.model.lora import is_adapter  # noqa: E402
from jaxlm.parallel import rules  # noqa: E402
from jaxlm.train.optimizer import make_optimizer, only_trainable, trainable_mask  # noqa: E402


def nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def timed(step, state, batch, steps: int) -> tuple[float, object]:
    state = jax.block_until_ready(step(state, batch))  # compile
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state = jax.block_until_ready(step(state, batch))
        times.append(time.perf_counter() - t)
    return statistics.median(times), state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default="q,k,v,o,up,gate,down")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)

    model_cfg = config_from_dict({"model": dict(family="llama", vocab_size=args.vocab, d_model=args.d_model,
                                                n_layers=args.layers, n_heads=4, max_seq_len=args.seq_len,
                                                lora=dict(rank=args.rank, targets=args.targets.split(",")))}).model
    model = Transformer(model_cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model))
    axes = rules.logical_axes(model)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq_len + 1), 0, args.vocab)
    batch = (tokens[:, :-1], tokens[:, 1:])
    optim = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1)

    def loss_fn(p, batch):
        logits = nnx.merge(graphdef, p)(batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    # Full fine-tuning: every parameter (the adapters too, so both steps run the same forward pass).
    full_tx = make_optimizer(optim, 100, axes)

    @jax.jit
    def full_step(state, batch):
        p, opt = state
        _, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, opt = full_tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt

    # LoRA: only the adapters are differentiated and optimised.
    flat, flat_axes = flatten_dict(params), flatten_dict(axes, is_leaf=lambda _, x: isinstance(x, tuple))
    adapters = unflatten_dict({k: v for k, v in flat.items() if is_adapter(k)})
    base = unflatten_dict({k: v for k, v in flat.items() if not is_adapter(k)})
    lora_tx = make_optimizer(optim, 100, unflatten_dict({k: v for k, v in flat_axes.items() if is_adapter(k)}))

    def lora_loss(a, base, batch):
        return loss_fn(unflatten_dict({**flatten_dict(base), **flatten_dict(a)}), batch)

    @jax.jit
    def lora_step(state, batch):
        a, opt = state
        _, grads = jax.value_and_grad(lora_loss)(a, base, batch)
        updates, opt = lora_tx.update(grads, opt, a)
        return optax.apply_updates(a, updates), opt

    full_opt, lora_opt = full_tx.init(params), lora_tx.init(adapters)
    masked_opt = only_trainable(full_tx, trainable_mask(params, lora=True)).init(params)
    assert nbytes(masked_opt) == nbytes(lora_opt), (nbytes(masked_opt), nbytes(lora_opt))
    full_time, _ = timed(full_step, (params, full_opt), batch, args.steps)
    lora_time, _ = timed(lora_step, (adapters, lora_opt), batch, args.steps)

    n_all, n_adapt = sum(x.size for x in flat.values()), sum(x.size for x in jax.tree.leaves(adapters))
    print(f"llama d_model={args.d_model} layers={args.layers} vocab={args.vocab}: {n_all:,} parameters, "
          f"LoRA rank {args.rank} on {args.targets}: {n_adapt:,} adapter parameters ({n_adapt / n_all:.2%})")
    print(f"batch {args.batch} x {args.seq_len} tokens, AdamW, median of {args.steps} steps; "
          f"{jax.devices()[0].platform}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| | full fine-tuning | LoRA | LoRA / full |")
    print("|---|---|---|---|")
    print(f"| optimizer state | {nbytes(full_opt) / 2**20:.2f} MiB | {nbytes(lora_opt) / 2**20:.3f} MiB | "
          f"{nbytes(lora_opt) / nbytes(full_opt):.4f} |")
    print(f"| trainable parameters | {n_all:,} | {n_adapt:,} | {n_adapt / n_all:.4f} |")
    print(f"| step time | {full_time * 1e3:.1f} ms | {lora_time * 1e3:.1f} ms | {lora_time / full_time:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
