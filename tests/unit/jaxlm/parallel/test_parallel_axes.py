"""The four mesh axes: what they compile to, and that each alone and mixed trains like one device."""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxlm.parallel import pipeline, rules
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train.state import model_spec
from tests.helpers import max_rel, synthetic_batches, tiny_config, train_keeping_first_grads, tree_rel

RTOL = 1e-5


def _collectives(hlo: str, op: str) -> list[str]:
    return [line for line in hlo.splitlines() if re.search(rf"= .*\b{op}(-start)?\(", line)]


def _compiled_text(config, fn, tokens):
    """HLO of fn(mesh, model, tokens) compiled on 8 devices; tokens' last two dims are (batch, length)."""
    mesh = build_mesh(config.mesh)
    spec = model_spec(config)
    params = rules.param_shardings(spec.axes, spec.shapes, mesh)
    jitted = jax.jit(lambda p, t: fn(mesh, nnx.merge(spec.graphdef, p), t),
                     in_shardings=(params, rules.batch_sharding(mesh, 2, leading=tokens.ndim - 2)))
    with rules.activation_sharding(mesh):
        return jitted.lower(spec.shapes, tokens).compile().as_text()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tensor_parallelism_is_megatron_style(family):
    """Column- then row-split: one all-reduce of the (batch, length, embed) activation after
    attention and one after the MLP, nothing else (plus one for the vocab-split embedding lookup)."""
    n_layers = 3
    config = tiny_config(family, mesh={"data": 4, "tensor": 2}, model={"n_layers": n_layers, "scan_layers": False})
    tokens = jax.ShapeDtypeStruct((8, 16), jnp.int32)

    def forward(mesh, model, tokens_BT):
        positions = jnp.broadcast_to(jnp.arange(16), tokens_BT.shape)
        return model.hidden(tokens_BT, positions, jnp.ones_like(tokens_BT))

    hlo = _compiled_text(config, forward, tokens)
    reduces = _collectives(hlo, "all-reduce")
    assert len(reduces) == 2 * n_layers + 1
    for line in reduces:  # each reduces this device's (2 rows, 16 positions, 32 features) over a tensor pair
        assert "f32[2,16,32]" in line
    assert re.search(r"replica_groups=\{\{0,1\},\{2,3\},\{4,5\},\{6,7\}\}", reduces[1])
    for op in ("all-gather", "reduce-scatter", "all-to-all"):
        assert not _collectives(hlo, op), op


def test_pipeline_moves_activations_by_collective_permute_only():
    """GPipe over pipe=4: stage outputs rotate by collective permutes; no weight or activation is
    gathered across stages (each device keeps its own layers)."""
    config = tiny_config("llama", mesh={"data": 2, "pipe": 4}, model={"n_layers": 4})
    tokens = jax.ShapeDtypeStruct((4, 2, 16), jnp.int32)  # (micro-batches, rows, length)

    def forward(mesh, model, tokens_MBT):
        positions = jnp.broadcast_to(jnp.arange(16), tokens_MBT.shape)
        x, _ = jax.vmap(model.embed_inputs)(tokens_MBT, positions)
        plan = pipeline.make_plan(config, 4, 4)
        return pipeline.run_stages(model, plan, mesh, x, positions, jnp.ones_like(tokens_MBT))

    hlo = _compiled_text(config, forward, tokens)
    permutes = _collectives(hlo, "collective-permute")
    assert permutes
    ring = {(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4)}  # stage s -> s+1 in each data group
    for line in permutes:
        pairs = re.search(r"source_target_pairs=\{((\{\d+,\d+\},?)+)\}", line).group(1)
        assert {tuple(map(int, p)) for p in re.findall(r"\{(\d+),(\d+)\}", pairs)} == ring
        assert "f32[1,1,16,32]" in line  # one stage's micro-batch: (stage, rows, length, embed) per device
    for op in ("all-gather", "all-to-all", "reduce-scatter"):
        assert not _collectives(hlo, op), op


# ----------------------------------------------------------------------------------------------
# Each axis alone and mixed, on 8 devices, against one device: 10 steps of losses, gradient norms,
# and every entry of the first step's gradients. A model every axis can split 8 ways.

MATRIX = [
    ({"data": 8}, {}),
    ({"data": 1, "fsdp": 8}, {}),
    ({"data": 1, "tensor": 8}, {}),
    ({"data": 1, "pipe": 8}, {}),
    ({"data": 2, "pipe": 4}, {"schedule": "circular", "repeats": 2}),
    ({"data": 2, "tensor": 2, "pipe": 2}, {}),
    ({"data": 1, "fsdp": 4, "pipe": 2}, {"schedule": "circular", "repeats": 2, "microbatches": 2}),
    ({"data": 2, "fsdp": 2, "tensor": 2}, {}),
]


def _matrix_config(family, mesh, pipe_cfg):
    config = tiny_config(family, mesh=mesh, seq_len=16,
                         model={"d_model": 64, "n_heads": 8, "n_kv_heads": 4 if family == "llama" else None,
                                "n_layers": 8},
                         train={"global_batch": 32, "micro_batch": 8})
    for key, value in pipe_cfg.items():
        setattr(config.pipeline, key, value)
    return config


@pytest.fixture(scope="module")
def matrix_batches():
    return list(synthetic_batches(10, 4, 8, 16, 96, seed=11))


@pytest.fixture(scope="module")
def one_device():
    cache = {}

    def get(family, batches):
        if family not in cache:
            cache[family] = train_keeping_first_grads(_matrix_config(family, {"data": 1}, {}), batches,
                                                      devices=jax.devices()[:1])
        return cache[family]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mesh, pipe_cfg", MATRIX, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "-")
def test_every_axis_alone_and_mixed_matches_one_device(family, mesh, pipe_cfg, matrix_batches, one_device):
    loss_1, norm_1, grads_1 = one_device(family, matrix_batches)
    loss_8, norm_8, grads_8 = train_keeping_first_grads(_matrix_config(family, mesh, pipe_cfg), matrix_batches)
    assert loss_1[-1] < loss_1[0] - 0.5
    assert max_rel(loss_1, loss_8) <= RTOL
    assert max_rel(norm_1, norm_8) <= RTOL
    assert tree_rel(grads_1, grads_8) <= RTOL
