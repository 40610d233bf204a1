"""Muon and schedule-free AdamW: numerics against a direct numpy computation, sharded against
unsharded, checkpoints and exact resume, and schedule-free's averaged parameters used by
evaluation and export."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from optax.contrib import MuonDimensionNumbers

from jaxlm.config import Config, ConfigError, OptimConfig, ScheduleConfig, config_from_dict
from jaxlm.eval.loading import load_hf_dir
from jaxlm.export import export_run
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train.checkpoint_reader import read_params
from jaxlm.train.loop import Trainer, train
from jaxlm.train.optimizer import eval_params, make_optimizer, muon_dimensions
from jaxlm.train.state import build_optimizer, model_spec
from tests.helpers import losses, run_config, run_steps, synthetic_batches, tiny_config, write_run_dataset

COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic Newton-Schulz coefficients


def _numpy_newton_schulz(g: np.ndarray, steps: int = 5, eps: float = 1e-8) -> np.ndarray:
    """Muon's orthogonalisation written out from the write-up, in float64."""
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + eps)
    a, b, c = COEFFS
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def _numpy_muon(grads: list[np.ndarray], lr: float, beta: float = 0.95) -> list[np.ndarray]:
    """Updates of a (fan_in, fan_out) matrix for successive gradients: Nesterov momentum with
    optax's bias correction, orthogonalised, times sqrt(max(1, fan_out / fan_in)) and -lr."""
    mu, out = np.zeros_like(grads[0]), []
    for t, g in enumerate(grads, start=1):
        mu = beta * mu + (1 - beta) * g
        nesterov = beta * mu / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta ** t)
        scale = np.sqrt(max(1.0, g.shape[1] / g.shape[0]))
        out.append(-lr * scale * _numpy_newton_schulz(nesterov))
    return out


def _muon_cfg(**kw) -> OptimConfig:
    return OptimConfig(name="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.0, clip_norm=0.0,
                       schedule=ScheduleConfig(name="constant", warmup_steps=0), **kw)


def test_muon_update_of_small_matrices_equals_numpy_newton_schulz():
    rng = np.random.default_rng(0)
    axes = {"up": ("embed", "mlp"), "down": ("layers", "mlp", "embed"), "o": ("heads", "kv", "embed"),
            "norm": ("embed",), "embed": ("vocab", "embed")}
    shapes = {"up": (6, 10), "down": (2, 10, 6), "o": (2, 3, 6), "norm": (6,), "embed": (7, 6)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]
    opt = make_optimizer(_muon_cfg(), total_steps=10, axes_tree=axes)
    state = opt.init(params)
    updates = []
    for g in grads:
        u, state = jax.jit(opt.update)(jax.tree.map(jnp.asarray, g), state, params)
        updates.append(jax.tree.map(np.asarray, u))

    def check(got, want):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())

    for t, want in enumerate(_numpy_muon([g["up"].astype(np.float64) for g in grads], 0.02)):
        check(updates[t]["up"], want)
    for layer in range(2):  # `layers` is a batch dim: each layer's (mlp, embed) matrix alone
        for t, want in enumerate(_numpy_muon([g["down"][layer].astype(np.float64) for g in grads], 0.02)):
            check(updates[t]["down"][layer], want)
    # (heads, kv) are contracted together: the (6, 6) matrix they flatten to
    for t, want in enumerate(_numpy_muon([g["o"].reshape(6, 6).astype(np.float64) for g in grads], 0.02)):
        check(updates[t]["o"].reshape(6, 6), want)
    # norms and the embedding take (Nesterov) AdamW at optim.lr: its bias-corrected first step is
    # -lr * (1 + b1 / (1 + b1)) * sign(g), up to eps
    for name in ("norm", "embed"):
        np.testing.assert_allclose(updates[0][name], -1e-3 * (1 + 0.9 / 1.9) * np.sign(grads[0][name]), rtol=1e-4)


def test_muon_takes_hidden_matrices_and_leaves_embeddings_norms_biases_to_adamw():
    spec = model_spec(tiny_config("gpt2", model={"tie_embeddings": False}))
    dims = jax.tree_util.tree_flatten_with_path(muon_dimensions(spec.axes), 
                                              is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers))[0]
    muon = sorted(jax.tree_util.keystr(p) for p, d in dims if d is not None)
    assert muon == [f"['blocks']['{m}']['{n}']['kernel']" for m, n in [
        ("attn", "k"), ("attn", "o"), ("attn", "q"), ("attn", "v"), ("mlp", "down"), ("mlp", "up")]]
    adamw = {jax.tree_util.keystr(p) for p, d in dims if d is None}
    assert {"['embed']", "['pos_embed']", "['final_norm']['scale']", "['blocks']['mlp']['up']['bias']",
            "['blocks']['attn']['q']['bias']"} <= adamw
    assert any("unembed" in name for name in adamw)  # the untied output matrix (vocab dim)


@pytest.mark.parametrize("mesh_axes", [{"fsdp": 8}, {"tensor": 4, "data": 2}])
def test_muon_update_of_a_sharded_model_equals_unsharded(mesh_axes):
    config = tiny_config("llama", optim={"name": "muon"}, model={"d_model": 64, "n_heads": 8, "n_kv_heads": 4})
    spec = model_spec(config)
    opt = build_optimizer(config, spec)
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), spec.shapes)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.02, jnp.float32), spec.shapes)

    def two_updates(p, g):
        state = opt.init(p)
        u1, state = opt.update(g, state, p)
        u2, _ = opt.update(jax.tree.map(lambda x: -0.5 * x, g), state, p)
        return u1, u2

    ref = jax.device_get(jax.jit(two_updates)(params, grads))
    mesh = build_mesh(tiny_config("llama", mesh=mesh_axes).mesh, jax.devices()[:8])
    shard = rules.param_shardings(spec.axes, spec.shapes, mesh)
    assert any(s.spec != PartitionSpec() and any(s.spec) for s in jax.tree.leaves(
        shard, is_leaf=lambda x: isinstance(x, NamedSharding)))  # something really is split
    got = jax.device_get(jax.jit(two_updates, in_shardings=(shard, shard), out_shardings=(shard, shard))(
        jax.device_put(params, shard), jax.device_put(grads, shard)))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


@pytest.mark.slow  # ~90 s on a loaded 2-core machine: two meshes compile the whole step
def test_muon_training_on_an_fsdp_tensor_mesh_matches_one_device():
    one = tiny_config("gpt2", optim={"name": "muon"})
    mixed = tiny_config("gpt2", optim={"name": "muon"}, mesh={"data": 2, "fsdp": 2, "tensor": 2})
    batches = list(synthetic_batches(8, 1, 8, 16, 96))
    loss_1, norm_1, _ = run_steps(one, batches, devices=jax.devices()[:1])
    loss_8, norm_8, _ = run_steps(mixed, batches, devices=jax.devices()[:8])
    assert loss_1[-1] < loss_1[0] - 0.5  # it trains
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    np.testing.assert_allclose(norm_8, norm_1, rtol=1e-5)


def test_schedule_free_eval_params_are_the_average():
    """x = (y - (1 - b1) z) / b1, with z in the optimizer state and y the trained params."""
    cfg = OptimConfig(name="schedule_free_adamw", lr=0.1, b1=0.9, clip_norm=0.0,
                      schedule=ScheduleConfig(name="constant", warmup_steps=0))
    axes = {"w": ("embed", "mlp")}
    opt = make_optimizer(cfg, 10, axes)
    params = {"w": jnp.ones((3, 4))}
    state = opt.init(params)
    for i in range(3):
        u, state = opt.update({"w": jnp.full((3, 4), float(i + 1))}, state, params)
        params = optax.apply_updates(params, u)
    (sf,) = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.contrib.ScheduleFreeState))
             if isinstance(s, optax.contrib.ScheduleFreeState)]
    x = eval_params(cfg, params, state)["w"]
    np.testing.assert_allclose(x, (params["w"] - 0.1 * sf.z["w"]) / 0.9, rtol=1e-6)
    assert not np.allclose(x, params["w"])  # evaluation really sees another point
    assert eval_params(OptimConfig(), params, state) is params  # other optimizers: params as trained


@pytest.mark.parametrize("name", ["muon", "schedule_free_adamw"])
def test_new_optimizers_train(name):
    config = tiny_config("gpt2", optim={"name": name, "lr": 1e-2})
    losses, _, params = run_steps(config, synthetic_batches(15, 1, 8, 16, 96), devices=jax.devices()[:1])
    assert losses[-1] < losses[0] - 0.5
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


# ------------------------------------------------------------------------------------------------
# Through the Trainer: checkpoints, exact resume, and what evaluation and export read.

def _run_config(workdir, dataset, name: str, steps: int) -> Config:
    # constant schedule: a run stopped at step 8 and one of 12 steps share their first 8 steps
    return config_from_dict(run_config(workdir, dataset, steps=steps, every=4, optim={
        "name": name, "lr": 1e-2, "schedule": {"name": "constant", "warmup_steps": 2}}))


@pytest.mark.slow  # three short runs through the Trainer: minutes on a loaded 2-core machine
@pytest.mark.parametrize("name", ["muon", "schedule_free_adamw"])
def test_checkpoint_and_resume_are_exact(tmp_path, name):
    dataset = write_run_dataset(tmp_path / "data")
    train(_run_config(tmp_path / "whole", dataset, name, steps=12))
    train(_run_config(tmp_path / "parts", dataset, name, steps=8))
    train(_run_config(tmp_path / "parts", dataset, name, steps=12))  # resumes from the step-8 checkpoint
    whole, parts = losses(tmp_path / "whole"), losses(tmp_path / "parts")
    assert [whole[s] for s in range(9, 13)] == [parts[s] for s in range(9, 13)]  # bitwise
    assert whole[("val", 12)] == parts[("val", 12)]
    states = []
    for run in ("whole", "parts"):
        trainer = Trainer(_run_config(tmp_path / run, dataset, name, steps=12))  # restores step 12
        states.append(jax.device_get(trainer.state))
        trainer.close()
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # a Trainer run, export and reload: ~90 s on a loaded 2-core machine
def test_schedule_free_evaluation_and_export_use_the_averaged_parameters(tmp_path):
    dataset = write_run_dataset(tmp_path / "data")
    trainer = Trainer(_run_config(tmp_path / "run", dataset, "schedule_free_adamw", steps=8))
    try:
        trainer.run()
        trained = jax.device_get(trainer.state["params"])
        averaged = jax.device_get(trainer.eval_params())
        val = trainer.evaluate()
        on_trained = _val_loss_at(trainer, trainer.state["params"])
        on_averaged = _val_loss_at(trainer, trainer.eval_params())
    finally:
        trainer.close()
    assert val == on_averaged and val != on_trained  # the loop's val_loss is the average's
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(averaged))) > 1e-3

    config, restored = read_params(str(tmp_path / "run"))  # what jaxlm.eval and jaxlm.export read
    for a, b in zip(jax.tree.leaves(averaged), jax.tree.leaves(jax.device_get(restored))):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-7)
    export_run(config, restored, str(tmp_path / "hf"))  # (the test data has no tokenizer to ship)
    exported = load_hf_dir(str(tmp_path / "hf")).params
    for a, b in zip(jax.tree.leaves(averaged), jax.tree.leaves(jax.device_get(exported))):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-7)


def _val_loss_at(trainer, params) -> float:
    """Trainer.evaluate's computation on given parameters."""
    keep = trainer.eval_params
    trainer.eval_params = lambda: params
    try:
        return trainer.evaluate()
    finally:
        trainer.eval_params = keep


@pytest.mark.parametrize("optim, extra, message", [
    ({"name": "muon", "ns_steps": 0}, {}, "ns_steps >= 1"),
    ({"name": "muon", "muon_momentum": 1.0}, {}, "muon_momentum < 1"),
    ({"name": "schedule_free_adamw", "b1": 0.0}, {}, "optim.b1 must be in (0, 1)"),
    ({"name": "schedule_free_adamw"}, {"diloco": {"enabled": True}}, "cannot run under diloco.enabled"),
    ({"name": "muom"}, {}, "muon, schedule_free_adamw"),
])
def test_bad_optimizer_settings_fail_before_compute(optim, extra, message):
    raw = {"data": {"sources": [{"path": "d"}]}, "optim": optim, **extra}
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(raw)
