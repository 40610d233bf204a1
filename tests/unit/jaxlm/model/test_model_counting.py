"""Parameters and FLOPs counted from the model: the planner's table is the real model's, and MFU
and the planner share one FLOPs count."""

import math

import jax
import pytest
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.model import Transformer, counting
from jaxlm.plan import memory
from jaxlm.train import metrics

SHAPES = [
    dict(family="gpt2", vocab_size=96, d_model=64, n_layers=2, n_heads=4, max_seq_len=32),  # tied
    dict(family="gpt2", vocab_size=96, d_model=48, n_layers=3, n_heads=3, max_seq_len=16, tie_embeddings=False),
    dict(family="llama", vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True),  # GQA
    dict(family="llama", vocab_size=100, d_model=96, n_layers=3, n_heads=6, n_kv_heads=1, d_ff=200,
         tie_embeddings=False),  # multi-query
    dict(family="llama", vocab_size=64, d_model=32, n_layers=1, n_heads=4, head_dim=16, tie_embeddings=False),
]


def _full_depth(cfg: ModelConfig) -> dict:
    """Every parameter of the model traced at its full depth: name -> (shape, logical axes)."""
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return {".".join(map(str, path)): (tuple(v.shape), tuple(v.get_metadata()["logical_axes"]))
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _real_params(cfg: ModelConfig) -> dict:
    """The parameters as training creates them: real arrays (one compiled init, as train.state does)."""
    return jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)))()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s['family']}-{s['d_model']}")
def test_planner_table_is_the_real_models(shape):
    cfg = ModelConfig(**shape)
    real = _full_depth(cfg)
    table = memory.param_table(cfg)
    assert {p.name: (p.shape, p.axes) for p in table} == real  # names, full-depth shapes, logical axes
    assert memory.count_params(cfg) == sum(math.prod(shape) for shape, _ in real.values())
    assert ("unembed" in real) == (not cfg.tie_embeddings)


def test_planner_count_is_the_count_of_real_arrays():
    # One model created for real (the others above are traced at full depth without allocating):
    # multi-query attention, untied embeddings, one layer.
    cfg = ModelConfig(**{**SHAPES[3], "n_layers": 1})
    arrays = jax.tree_util.tree_flatten_with_path(_real_params(cfg))[0]
    assert {".".join(str(k.key) for k in path): x.shape for path, x in arrays} == \
        {p.name: p.shape for p in memory.param_table(cfg)}
    assert memory.count_params(cfg) == sum(x.size for _, x in arrays) == (
        96 * 6 * 16 + 2 * 96 * 1 * 16 + 6 * 16 * 96 + 3 * 96 * 200 + 2 * 96  # q, k, v, o, MLP, 2 norms
        + 96 + 2 * 96 * 100)  # final norm, embedding, unembedding


def test_flops_per_token_counts_the_matmuls_of_the_model():
    # llama, GQA, untied: q (d x n*h), k and v (d x kv*h), o (n*h x d), gate, up, down; the unembedding.
    cfg = ModelConfig(**SHAPES[3])
    d, n, kv, h, f, V, L, T = 96, 6, 1, 16, 200, 100, 3, 32
    kernels = L * (d * n * h + 2 * d * kv * h + n * h * d + 3 * d * f)
    assert counting.matmul_param_count(cfg) == kernels + d * V
    assert counting.flops_per_token(cfg, T) == 6 * (kernels + d * V) + 12 * L * n * h * T
    # gpt2, tied: biases, norms and both embeddings' lookups are no matmuls; the tied unembedding is
    cfg = ModelConfig(**SHAPES[0])
    d, f, V, L = 64, 256, 96, 2
    assert counting.matmul_param_count(cfg) == L * (4 * d * d + 2 * d * f) + d * V
    assert counting.param_count(cfg) > counting.matmul_param_count(cfg) + 32 * d  # + biases, norms, positions


def test_metrics_and_planner_use_one_flops_function():
    assert metrics.flops_per_token is counting.flops_per_token
    assert memory.flops_per_token is counting.flops_per_token
    assert memory.count_params is counting.param_count


def test_deep_presets_are_counted_without_tracing_every_layer():
    # The table evaluates one layer and stacks: llama-70b is counted in well under a second, exactly.
    cfg = memory.preset("llama-70b")
    assert counting.param_count(cfg) == 70_553_706_496
    blocks = [p for p in counting.param_table(cfg) if p.axes[0] == "layers"]
    assert blocks and all(p.shape[0] == 80 for p in blocks)
    assert jax.device_count() == 8  # nothing above allocated device memory for the model
