"""Attention at long context compiled for TPU (no TPU needed): splash kernel vs dense, per-chip memory.

    python benchmarks/splash_memory.py [--length 8192] [--heads 8] [--kv-heads 8] [--batch 4] [--topology v5e-4]

Compiles the gradient of jaxlm's own attention (`jaxlm.model.attention`: the splash path and the
dense path) for a TPU slice's compile-only devices, the batch split over the chips, and prints
XLA's per-chip temporaries and totals side by side (the table in docs/tpu.md).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxlm.config import MeshConfig  # noqa: E402
from jaxlm.model import attention, layers  # noqa: E402
from jaxlm.parallel import rules  # noqa: E402
from jaxlm.parallel.mesh import build_mesh  # noqa: E402
from jaxlm.plan import aot  # noqa: E402
from jaxlm.plan.tables import table  # noqa: E402

MiB = 2**20


def compiled_attention(kind: str, mesh, b: int, t: int, n: int, kv: int, h: int):
    def dense(q, k, v, seg):
        mask = attention.document_causal_mask(seg, seg)
        return attention.attend(q, k, v, mask, dropout=layers.Dropout(0.0), dropout_key=None)

    fn = attention.splash_attend if kind == "splash" else dense

    def loss(q, k, v, seg):  # forward and backward, as in training
        return jnp.sum(fn(q, k, v, seg).astype(jnp.float32))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    batch = rules.batch_sharding(mesh, ndim=4)
    q = jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16, sharding=batch)
    k = jax.ShapeDtypeStruct((b, t, kv, h), jnp.bfloat16, sharding=batch)
    seg = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=rules.batch_sharding(mesh, ndim=2))
    with rules.activation_sharding(mesh):
        return grad.lower(q, k, k, seg).compile().memory_analysis()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--topology", default="v5e-4")
    args = parser.parse_args()
    topo = aot.parse_topology(args.topology)
    devices = aot.topology_devices(topo)
    mesh = build_mesh(MeshConfig(data=len(devices)), devices)
    rows, totals = [], {}
    for kind in ("splash", "dense"):
        mem = compiled_attention(kind, mesh, args.batch, args.length, args.heads, args.kv_heads, args.head_dim)
        totals[kind] = mem.temp_size_in_bytes
        rows.append([kind, f"{mem.argument_size_in_bytes / MiB:.1f}", f"{mem.temp_size_in_bytes / MiB:.1f}",
                     f"{(mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes) / MiB:.1f}"])
        print(rows[-1], flush=True)
    print(f"attention forward+backward, bf16, batch {args.batch} x {args.length} tokens x {args.heads} heads "
          f"({args.kv_heads} kv) x {args.head_dim}, causal with segment ids, over {topo.name} "
          f"({len(devices)} x {topo.device.name}, batch split over the chips); per chip:")
    print(table(["attention", "arguments MiB", "temporaries MiB", "total MiB"], rows))
    print(f"dense needs {totals['dense'] / max(totals['splash'], 1):.0f}x the splash kernel's temporaries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
