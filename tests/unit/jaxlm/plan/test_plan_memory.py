"""Memory, FLOPs, time and mesh planning, checked against the real model, rules and train step."""

import math

import jax
import pytest

from jaxlm.config import config_from_dict
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import build_mesh, mesh_shape
from jaxlm.plan import PlanError
from jaxlm.plan.memory import (GiB, MeshShape, Workload, count_params, estimate_memory, estimate_time,
                               flops_per_token, params_per_device, parse_mesh, preset, recommend_mesh)
from jaxlm.train.setup import compile_for_analysis
from jaxlm.train.state import model_spec

MODELS = [
    dict(family="gpt2", vocab_size=96, d_model=64, n_layers=2, n_heads=4, max_seq_len=32),
    dict(family="gpt2", vocab_size=96, d_model=64, n_layers=3, n_heads=4, max_seq_len=32, tie_embeddings=False),
    dict(family="llama", vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True),
    dict(family="llama", vocab_size=100, d_model=96, n_layers=2, n_heads=6, d_ff=200, tie_embeddings=False),
]


def _config(model: dict, mesh: dict = None, **sections):
    raw = {"model": model, "data": {"seq_len": 32}, "mesh": mesh or {}}
    raw.update(sections)
    return config_from_dict(raw)


@pytest.mark.parametrize("model", MODELS)
def test_param_count_matches_the_real_model(model):
    config = _config(model)
    assert count_params(config.model) == model_spec(config).param_count


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mesh", [dict(data=8), dict(fsdp=4, data=2), dict(tensor=2, fsdp=2, data=2), dict(tensor=4, data=2)])
def test_params_per_device_match_the_real_shardings(model, mesh):
    config = _config(model, mesh)
    spec = model_spec(config)
    shardings = rules.param_shardings(spec.axes, spec.shapes, build_mesh(config.mesh))
    real = sum(math.prod(s.shard_shape(x.shape)) for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(spec.shapes)))
    est, _ = params_per_device(config.model, MeshShape(**mesh_shape(config.mesh, 8)))
    assert est == real


def test_presets_have_the_published_sizes():
    assert count_params(preset("gpt2-124m")) == 124_439_808
    assert count_params(preset("llama-8b")) == 8_030_261_248
    assert count_params(preset("llama-70b")) == 70_553_706_496


def test_flops_per_token():
    m = preset("gpt2-124m")
    # 6 x (block matmul weights + unembedding) + 12 L d S
    blocks = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert flops_per_token(m, 1024) == 6 * (blocks + 768 * 50257) + 12 * 12 * 768 * 1024


def test_memory_terms_scale_as_expected():
    m = preset("llama-1b")
    work = Workload(global_batch=32, seq_len=2048, remat="full")
    one = estimate_memory(m, work, MeshShape(data=8))
    sharded = estimate_memory(m, work, MeshShape(fsdp=8))
    n = count_params(m)
    assert one.params == n * 4 and one.optimizer == n * 8 and one.grads == n * 4
    assert sharded.params == pytest.approx(n * 4 / 8, rel=1e-3)  # every weight has an `embed` dim
    assert sharded.activations == one.activations  # same tokens per device
    micro = estimate_memory(m, Workload(global_batch=32, seq_len=2048, micro_batch=8, remat="full"), MeshShape(data=8))
    assert micro.grads == 2 * one.grads  # the float32 accumulator
    assert micro.activations == one.activations / 4
    none = estimate_memory(m, Workload(global_batch=32, seq_len=2048, remat="none"), MeshShape(data=8))
    dots = estimate_memory(m, Workload(global_batch=32, seq_len=2048, remat="dots"), MeshShape(data=8))
    assert one.activations < dots.activations < none.activations
    # TPU: one compute-dtype copy of every weight whatever the policy (XLA hoists the casts out of
    # the loops); XLA's CPU backend: the layers' weights and their gradients, remat none only
    assert none.weights_compute == one.weights_compute == n * 2
    cpu_none, cpu_full = (estimate_memory(m, Workload(global_batch=32, seq_len=2048, remat=r, platform="cpu"),
                                          MeshShape(data=8)) for r in ("none", "full"))
    assert cpu_none.weights_compute > 0 and cpu_full.weights_compute == 0


@pytest.mark.parametrize("mesh,work,match", [
    (MeshShape(data=3), Workload(8, 128), "splits the batch 3 ways"),
    (MeshShape(data=2, tensor=5), Workload(8, 128), "tensor=5 must divide"),
    (MeshShape(data=1, pipe=5), Workload(8, 128), "pipe=5 does not divide"),
    (MeshShape(data=2), Workload(8, 128, micro_batch=3), "not a multiple of the micro-batch"),
    (MeshShape(data=2), Workload(8, 128, remat="some"), "unknown remat"),
])
def test_impossible_meshes_raise(mesh, work, match):
    with pytest.raises(PlanError, match=match):
        estimate_memory(preset("gpt2-124m"), work, mesh)


def test_parse_mesh():
    assert parse_mesh("data=8,fsdp=4") == MeshShape(8, 4, 1, 1)
    with pytest.raises(PlanError, match="data\\|fsdp\\|tensor\\|pipe"):
        parse_mesh("data=8,model=2")
    with pytest.raises(PlanError):
        parse_mesh("data=0")


def test_recommend_mesh_prefers_data_parallel_then_fsdp():
    small = preset("gpt2-124m")
    mesh, _ = recommend_mesh(small, Workload(64, 1024, remat="full"), 8, 80 * GiB)
    assert mesh == MeshShape(data=8)
    big = preset("llama-8b")
    work = Workload(256, 4096, remat="full", loss_chunk=4096)
    mesh, est = recommend_mesh(big, work, 64, 95 * GiB)
    assert mesh.tensor == 1 and mesh.fsdp > 1 and est.total <= 0.9 * 95 * GiB
    # the preferred mesh is the least sharded one that fits
    assert estimate_memory(big, work, MeshShape(data=mesh.data * 2, fsdp=mesh.fsdp // 2)).total > 0.9 * 95 * GiB
    with pytest.raises(PlanError, match="does not fit"):
        recommend_mesh(preset("llama-70b"), work, 8, 16 * GiB)


def test_time_and_cost():
    t = estimate_time(1e21, devices=64, peak_flops=459e12, mfu=0.5, price_per_device_hour=4.2)
    assert t.device_hours == pytest.approx(1e21 / (459e12 * 0.5) / 3600)
    assert t.wall_hours == pytest.approx(t.device_hours / 64)
    assert t.cost == pytest.approx(t.device_hours * 4.2)
    with pytest.raises(PlanError):
        estimate_time(1e21, 64, 459e12, 0.0)


# The real train step, compiled on 8 CPU devices: XLA's memory analysis against the estimate.
XLA_CONFIGS = [
    dict(model=dict(family="llama", d_model=128, n_heads=4, n_layers=3, vocab_size=4096),
         mesh=dict(data=8), train=dict(global_batch=16), seq_len=128),
    dict(model=dict(family="gpt2", d_model=128, n_heads=4, n_layers=3, vocab_size=2048, max_seq_len=256,
                    remat="full", tie_embeddings=False),
         mesh=dict(data=2, fsdp=4), train=dict(global_batch=16), seq_len=256),
    dict(model=dict(family="llama", d_model=128, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=4096,
                    remat="dots"),
         mesh=dict(data=4, tensor=2), train=dict(global_batch=16, micro_batch=8), seq_len=128),
    # pipelines: every schedule iteration's activations, the loss over the pass's micro-batches
    dict(model=dict(family="llama", d_model=128, n_heads=4, n_layers=4, vocab_size=2048, remat="full"),
         mesh=dict(data=2, pipe=4), train=dict(global_batch=16, micro_batch=2), seq_len=128),
    dict(model=dict(family="llama", d_model=128, n_heads=4, n_layers=8, vocab_size=256, remat="dots"),
         mesh=dict(data=2, pipe=4), pipeline=dict(schedule="circular", repeats=2),
         train=dict(global_batch=16, micro_batch=2), seq_len=128),
]


@pytest.mark.parametrize("case", XLA_CONFIGS)
def test_estimate_within_15_percent_of_xla(case):
    model = dict(case["model"], dtype="bfloat16")
    config = config_from_dict({"model": model, "mesh": case["mesh"], "train": case["train"],
                               "pipeline": case.get("pipeline", {}),
                               "data": {"seq_len": case["seq_len"]}})
    t = config.train
    n_micro = t.global_batch // t.micro_batch
    m = compile_for_analysis(config, n_micro=n_micro).memory_analysis()
    xla = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    work = Workload(t.global_batch, config.data.seq_len, t.micro_batch, config.model.remat, config.model.dtype,
                    config.model.param_dtype, config.optim.name, config.model.loss_chunk, platform="cpu",
                    pipeline_repeats=config.pipeline.repeats if config.pipeline.schedule == "circular" else 1,
                    pipeline_microbatches=config.pipeline.microbatches)
    est = estimate_memory(config.model, work, MeshShape(**mesh_shape(config.mesh, 8)))
    assert est.state == pytest.approx(m.argument_size_in_bytes, rel=0.01)
    assert est.total == pytest.approx(xla, rel=0.15)
