"""Pipeline parallelism: the schedule's bubble, its checks, and pipelined training equal to one device."""

import jax
import pytest

from jaxlm.config import ConfigError, config_from_dict
from jaxlm.parallel import pipeline
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train import setup
from jaxlm.train.setup import compile_for_analysis
from jaxlm.train.state import model_spec
from jaxlm.train.step import BATCH_KEYS
from tests.helpers import max_rel, synthetic_batches, tiny_config, train_keeping_first_grads, tree_rel

RTOL = 1e-5


def test_bubble_is_stages_minus_one_over_iterations():
    assert pipeline.bubble_fraction(4, 8) == pytest.approx(3 / 11)  # GPipe: (S-1)/(M+S-1)
    assert pipeline.bubble_fraction(4, 8, repeats=2) == pytest.approx(3 / 19)  # circular: (S-1)/(RM+S-1)
    assert pipeline.bubble_fraction(1, 8) == 0.0
    # More micro-batches, or more rounds, shrink it.
    gpipe = [pipeline.bubble_fraction(4, m) for m in (4, 8, 16, 32)]
    assert gpipe == sorted(gpipe, reverse=True)
    assert pipeline.bubble_fraction(4, 8, 4) < pipeline.bubble_fraction(4, 8, 2) < pipeline.bubble_fraction(4, 8)


def test_plan_splits_micro_batches_into_passes_and_reports_the_bubble():
    config = tiny_config(model={"n_layers": 8}, train={"global_batch": 32, "micro_batch": 2})
    plan = pipeline.make_plan(config, stages=4, n_micro=16)
    assert (plan.microbatches, plan.passes, plan.iterations) == (16, 1, 19)
    config.pipeline.microbatches = 8
    plan = pipeline.make_plan(config, stages=4, n_micro=16)
    assert (plan.microbatches, plan.passes) == (8, 2)
    assert plan.bubble == pytest.approx(3 / 11)
    assert "gpipe over 4 stages, 8 micro-batches per pass, 2 pass(es) per step, bubble 27.3%" in plan.describe()
    config.pipeline.schedule, config.pipeline.repeats = "circular", 2
    plan = pipeline.make_plan(config, stages=4, n_micro=16)
    assert plan.iterations == 2 * 8 + 3 and plan.bubble == pytest.approx(3 / 19)
    assert "circular x2" in plan.describe()


@pytest.mark.parametrize("change, message", [
    ({"model": {"n_layers": 6}}, r"n_layers \(6\) must be a multiple of mesh.pipe x pipeline.repeats \(4 x 1\)"),
    ({"pipeline": {"microbatches": 3}}, r"not a multiple of pipeline.microbatches \(3\)"),
    ({"pipeline": {"schedule": "circular", "repeats": 2}, "model": {"n_layers": 8},
      "train": {"global_batch": 6, "micro_batch": 2}},
     r"circular schedule needs at least as many micro-batches per pass as stages, got 3 < mesh.pipe=4"),
])
def test_impossible_pipelines_fail_before_compile_with_the_reason(change, message):
    config = tiny_config(model={"n_layers": 8, **change.get("model", {})},
                         train={"global_batch": 8, "micro_batch": 2, **change.get("train", {})})
    for key, value in change.get("pipeline", {}).items():
        setattr(config.pipeline, key, value)
    with pytest.raises(ConfigError, match=message):
        pipeline.check_config(config, stages=4)


def test_pipeline_config_is_validated():
    def load(pipeline_section):
        return config_from_dict({"pipeline": pipeline_section})

    with pytest.raises(ConfigError, match=r"circular needs pipeline.repeats >= 2"):
        load({"schedule": "circular"})
    with pytest.raises(ConfigError, match=r"pipeline.repeats \(3\) > 1 needs pipeline.schedule=circular"):
        load({"repeats": 3})
    with pytest.raises(ConfigError, match=r"pipeline.schedule is 'zigzag'"):
        load({"schedule": "zigzag"})
    assert load({"schedule": "circular", "repeats": 2, "microbatches": 8}).pipeline.repeats == 2


# A mixed mesh on 8 devices — data, tensor and a circular pipeline, two pipeline passes accumulated
# per step — against one device. Each axis alone and more mixes, both families: test_parallel_axes.py (slow).
CASES = [
    pytest.param("llama", {"data": 2, "tensor": 2, "pipe": 2}, {"schedule": "circular", "repeats": 2, "microbatches": 2},
                 id="llama-data2-tensor2-pipe2-circular"),
    pytest.param("gpt2", {"data": 1, "fsdp": 4, "pipe": 2}, {}, id="gpt2-fsdp4-pipe2", marks=pytest.mark.slow),
]


def _config(family, mesh, pipe_cfg):
    config = tiny_config(family, mesh=mesh, model={"n_layers": 4},
                         train={"global_batch": 16, "micro_batch": 4})
    for key, value in pipe_cfg.items():
        setattr(config.pipeline, key, value)
    return config


@pytest.mark.parametrize("family, mesh, pipe_cfg", CASES)
def test_pipelined_training_matches_one_device(family, mesh, pipe_cfg):
    steps = 10
    batches = list(synthetic_batches(steps, 4, 4, 16, 96, seed=5))
    loss_1, norm_1, grads_1 = train_keeping_first_grads(_config(family, {"data": 1}, {}), batches,
                                                        devices=jax.devices()[:1])
    loss_8, norm_8, grads_8 = train_keeping_first_grads(_config(family, mesh, pipe_cfg), batches)
    assert loss_1[-1] < loss_1[0] - 0.5  # it trains at all
    assert max_rel(loss_1, loss_8) <= RTOL
    assert max_rel(norm_1, norm_8) <= RTOL
    assert tree_rel(grads_1, grads_8) <= RTOL  # every gradient entry (of the first step)


def test_pipelined_evaluation_matches_one_device():
    micro = {k: v[0] for k, v in next(synthetic_batches(1, 1, 8, 16, 96, seed=2)).items()}
    results = []
    for mesh_cfg, devices in [({"data": 1}, jax.devices()[:1]), ({"data": 4, "pipe": 2}, jax.devices())]:
        config = tiny_config("gpt2", mesh=mesh_cfg)
        run = setup.build(config, mesh=build_mesh(config.mesh, devices))
        batch = {k: jax.device_put(micro[k], run.micro_sharding) for k in BATCH_KEYS}
        sums = run.eval_step(run.init()["params"], batch)
        results.append((float(sums.metrics["loss"]), float(sums.weight)))
    (nll_1, count_1), (nll_8, count_8) = results
    assert count_1 == count_8 == 8 * 15
    assert abs(nll_1 - nll_8) / nll_1 <= RTOL


@pytest.mark.parametrize("pipe_cfg", [{}, {"schedule": "circular", "repeats": 2}])
def test_stage_weights_are_not_kept_once_per_iteration(pipe_cfg):
    """The backward pass must not hold a copy of a stage's weights for every iteration of the
    schedule (what saving an iteration-dependent weight slice as a residual does): XLA's temp
    memory for the step stays below iterations x the stage's float32 weights."""
    config = config_from_dict({
        "model": {"family": "llama", "d_model": 128, "n_heads": 4, "n_layers": 8, "vocab_size": 256,
                  "remat": "full", "dtype": "bfloat16"},
        "mesh": {"data": 2, "pipe": 4}, "pipeline": pipe_cfg,
        "train": {"global_batch": 16, "micro_batch": 2}, "data": {"seq_len": 128}})
    spec = model_spec(config)
    layer_params = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(spec.shapes)
                       if "blocks" in jax.tree_util.keystr(path))
    plan = pipeline.make_plan(config, 4, 8)
    stage_bytes = layer_params // (4 * plan.repeats) * 4  # one stage's layers of one round, float32
    temp = compile_for_analysis(config, n_micro=8).memory_analysis().temp_size_in_bytes
    assert temp < plan.iterations * stage_bytes, (temp, plan.iterations * stage_bytes)
