"""Loss-spike handling, fast parts: the in-step guard (statistics, flags, exact skip), fault
injection inside the real train step, and the host-side monitor's rollback decisions."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import ConfigError, FaultConfig, SpikesConfig, config_from_dict
from jaxlm.train import spikes
from jaxlm.train.faults import FaultInjector
from jaxlm.train.state import build_optimizer, init_state, model_spec, state_shardings
from jaxlm.train.step import BATCH_KEYS, make_train_step
from jaxlm.parallel.mesh import build_mesh
from tests.helpers import tiny_config


# ----------------------------------------------------------------------------------------------
# The guard as a function


def _state(count=0, loss_mean=0.0, loss_var=0.0, grad_mean=0.0, grad_var=0.0, lr_until=-1):
    stats = spikes.init_stats()
    stats.update(count=jnp.int32(count), loss_mean=jnp.float32(loss_mean), loss_var=jnp.float32(loss_var),
                 grad_mean=jnp.float32(grad_mean), grad_var=jnp.float32(grad_var), lr_until=jnp.int32(lr_until))
    return {"params": {"w": jnp.arange(4.0)}, "opt_state": {"mu": jnp.ones(4), "count": jnp.int32(7)},
            "step": jnp.int32(200), "lr_scale": jnp.float32(0.5), "spike": stats}


def _proposed(state):
    return {"params": {"w": state["params"]["w"] + 1.0}, "opt_state": {"mu": jnp.zeros(4), "count": jnp.int32(8)},
            "step": state["step"] + 1, "lr_scale": state["lr_scale"]}


def _guard(cfg=None, **state_kw):
    guard = jax.jit(spikes.make_guard(cfg or SpikesConfig(warmup_steps=10)))
    state = _state(**state_kw)

    def call(loss, grad_norm):
        out, metrics = guard(state, _proposed(state), jnp.float32(loss), jnp.float32(grad_norm))
        return state, jax.device_get(out), {k: float(v) for k, v in jax.device_get(metrics).items()}
    return call


def test_normal_step_is_applied_and_statistics_follow_the_ema():
    # mean 2.0, spread 0.1 (var 0.01); log grad-norm mean 0 with spread 0.2.
    state, out, m = _guard(count=50, loss_mean=2.0, loss_var=0.01, grad_var=0.04)(2.1, math.exp(0.1))
    assert m["skipped"] == 0 and m["skips"] == 0
    np.testing.assert_array_equal(out["params"]["w"], np.arange(4.0) + 1.0)
    assert out["opt_state"]["count"] == 8 and out["step"] == 201
    assert m["loss_z"] == pytest.approx(1.0, rel=1e-5) and m["grad_z"] == pytest.approx(0.5, rel=1e-5)
    # count 51 -> rate max(1/51, 0.01) = 1/51; West's EMA variance.
    a = 1 / 51
    assert out["spike"]["count"] == 51
    assert out["spike"]["loss_mean"] == pytest.approx(2.0 + a * 0.1, rel=1e-6)
    assert out["spike"]["loss_var"] == pytest.approx((1 - a) * (0.01 + a * 0.01), rel=1e-5)
    assert out["spike"]["grad_mean"] == pytest.approx(a * 0.1, rel=1e-5)


def test_flagged_step_keeps_params_and_optimizer_state_exactly():
    state, out, m = _guard(count=50, loss_mean=2.0, loss_var=0.01, grad_var=0.04)(2.7, 1.0)  # loss z = 7
    assert m["skipped"] == 1 and m["skips"] == 1 and m["spike_score"] == pytest.approx(7.0, rel=1e-5)
    for key in ("params", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, out[key], jax.device_get(state[key]))
    assert out["step"] == 201  # the batch is consumed all the same
    assert out["spike"]["count"] == 50 and out["spike"]["loss_mean"] == pytest.approx(2.0)  # not learned
    # grad-norm alone: log(g) 1.7 above its mean with spread 0.2 -> z 8.5 > 8
    _, _, m = _guard(count=50, loss_mean=2.0, loss_var=0.01, grad_var=0.04)(2.0, math.exp(1.7))
    assert m["skipped"] == 1 and m["grad_z"] == pytest.approx(8.5, rel=1e-5)


def test_nan_and_inf_flag_even_in_warmup_and_nothing_else_does():
    for loss, norm in [(float("nan"), 1.0), (2.0, float("nan")), (float("inf"), 1.0)]:
        _, out, m = _guard(count=0)(loss, norm)
        assert m["skipped"] == 1 and m["spike_score"] == math.inf
        assert np.isfinite(out["params"]["w"]).all() and out["spike"]["count"] == 0
    _, out, m = _guard(count=9, loss_mean=2.0, loss_var=1e-6)(50.0, 1e6)  # huge, but still warming up
    assert m["skipped"] == 0 and m["spike_score"] == 0.0 and out["spike"]["count"] == 10


def test_spread_floors():
    # No variance at all: the loss spread is 1% of its mean, the log-grad-norm spread 0.1.
    call = _guard(count=50, loss_mean=2.0, loss_var=0.0)
    assert call(2.0 * 1.05, 1.0)[2]["loss_z"] == pytest.approx(5.0, rel=1e-4)
    assert call(2.0 * 1.05, 1.0)[2]["skipped"] == 0
    assert call(2.0 * 1.07, 1.0)[2]["skipped"] == 1
    assert call(2.0, math.exp(0.79))[2]["skipped"] == 0 and call(2.0, math.exp(0.81))[2]["skipped"] == 1


def test_suspicious_step_is_applied_but_not_learned():
    _, out, m = _guard(count=50, loss_mean=2.0, loss_var=0.01)(2.4, 1.0)  # z 4: between sustain_z and loss_z
    assert m["skipped"] == 0 and out["params"]["w"][0] == 1.0
    assert out["spike"]["count"] == 50 and out["spike"]["loss_mean"] == pytest.approx(2.0)


def test_learning_rate_scale_returns_after_the_rollback_window():
    _, out, _ = _guard(count=50, loss_mean=2.0, lr_until=201)(2.0, 1.0)
    assert out["lr_scale"] == 1.0 and out["spike"]["lr_until"] == -1
    _, out, _ = _guard(count=50, loss_mean=2.0, lr_until=202)(2.0, 1.0)
    assert out["lr_scale"] == 0.5 and out["spike"]["lr_until"] == 202


def test_disabled_guard_only_measures():
    _, out, m = _guard(SpikesConfig(enabled=False), count=0)(float("nan"), 1.0)
    assert m["skipped"] == 0 and out["params"]["w"][0] == 1.0


def test_statistics_match_a_float64_reference():
    cfg = SpikesConfig(warmup_steps=1000, ema_decay=0.95)
    guard = jax.jit(spikes.make_guard(cfg))
    rng = np.random.default_rng(0)
    losses = 3.0 - np.linspace(0, 1, 60) + 0.05 * rng.standard_normal(60)
    norms = np.exp(0.3 * rng.standard_normal(60))
    state = _state()
    mean = var = gmean = gvar = 0.0
    for n, (x, g) in enumerate(zip(losses, norms), start=1):
        new, _ = guard(state, _proposed(state), jnp.float32(x), jnp.float32(g))
        state = dict(state, spike=new["spike"])
        a = max(1 / n, 1 - cfg.ema_decay)
        d, dg = x - mean, np.log(g) - gmean
        mean, var = mean + a * d, (1 - a) * (var + a * d * d)
        gmean, gvar = gmean + a * dg, (1 - a) * (gvar + a * dg * dg)
    s = jax.device_get(state["spike"])
    assert s["count"] == 60
    np.testing.assert_allclose([s["loss_mean"], s["loss_var"], s["grad_mean"], s["grad_var"]],
                               [mean, var, gmean, gvar], rtol=2e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# In the real train step (one device, tiny model)


# Short runs: statistics with a short memory (ema_decay 0.9) have forgotten the early fall of the
# loss by step 95; with the default 0.99 that takes a few hundred steps (docs/loss_spikes.md).
FAULTS = [FaultConfig(kind="nan", step=5), FaultConfig(kind="garbage", step=95)]


def _noisy_batches(steps, rows=8, seq_len=16, vocab=96, seed=0):
    """A Markov chain with 4 equally likely successors per token: the loss levels off near log 4."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = np.empty((1, rows, seq_len + 1), np.int64)
        x[..., 0] = rng.integers(0, vocab, (1, rows))
        for t in range(seq_len):
            x[..., t + 1] = (5 * x[..., t] + rng.integers(0, 4, (1, rows))) % vocab
        ones = np.ones((1, rows, seq_len), np.int32)
        yield dict(inputs=x[..., :-1], targets=x[..., 1:], segment_ids=ones, loss_mask=ones,
                   positions=np.broadcast_to(np.arange(seq_len), (1, rows, seq_len)))


@pytest.fixture(scope="module")
def steps():
    """Compiled train steps on one device: "faulty" with FAULTS, "clean" the same program with
    faults that never hit; and the initial state (the same for both)."""
    def config(faults):
        c = tiny_config(train={"steps": 100})
        return dataclasses.replace(c, faults=faults, spikes=dataclasses.replace(c.spikes, warmup_steps=50, ema_decay=0.9))
    faulty, clean = config(FAULTS), config([dataclasses.replace(f, step=10**6) for f in FAULTS])
    mesh = build_mesh(faulty.mesh, jax.devices()[:1])
    spec = model_spec(faulty)
    optimizer = build_optimizer(faulty, spec)
    state = init_state(faulty, spec, optimizer, state_shardings(spec, optimizer, mesh))
    return {"faulty": jax.jit(make_train_step(faulty, spec, optimizer, mesh)),
            "clean": jax.jit(make_train_step(clean, spec, optimizer, mesh)), "init": state}


def _run(steps, name, batches):
    """Per step: (metrics, host copy of the state)."""
    state, out = steps["init"], []
    for batch in batches:
        state, metrics = steps[name](state, {k: jnp.asarray(batch[k], jnp.int32) for k in BATCH_KEYS})
        out.append((jax.device_get(metrics), jax.device_get(state)))
    return out


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_nan_gradients_skip_exactly_that_step_and_training_goes_on(steps):
    batches = list(_noisy_batches(20, seed=3))
    run = _run(steps, "faulty", batches)
    assert [int(m["skipped"]) for m, _ in run] == [0, 0, 0, 0, 1] + [0] * 15  # in warm-up: NaN always flags
    assert math.isnan(run[4][0]["grad_norm"]) and int(run[-1][0]["skips"]) == 1
    _assert_trees_equal(run[4][1]["params"], run[3][1]["params"])
    _assert_trees_equal(run[4][1]["opt_state"], run[3][1]["opt_state"])
    assert int(run[4][1]["step"]) == 5
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(run[-1][1]["params"]))
    assert run[-1][0]["loss"] < 0.8 * run[0][0]["loss"]  # it kept learning
    # Skipping is exactly "this batch never happened": the run without batch 5 ends identically.
    clean = _run(steps, "clean", batches[:4] + batches[5:])
    _assert_trees_equal(run[-1][1]["params"], clean[-1][1]["params"])
    _assert_trees_equal(run[-1][1]["opt_state"], clean[-1][1]["opt_state"])


def test_garbage_batch_is_flagged_after_warmup(steps):
    batches = list(_noisy_batches(100))
    run, clean = _run(steps, "faulty", batches), _run(steps, "clean", batches)
    assert [int(m["skipped"]) for m, _ in run] == [0, 0, 0, 0, 1] + [0] * 89 + [1] + [0] * 5
    assert [int(m["skipped"]) for m, _ in clean] == [0] * 100
    assert run[94][0]["loss"] > 3 * clean[94][0]["loss"] and run[94][0]["loss_z"] > 20
    _assert_trees_equal(run[94][1]["params"], run[93][1]["params"])


def _fault_state(step, rollbacks=0):
    return {"step": jnp.int32(step - 1), "spike": {"rollbacks": jnp.int32(rollbacks)}}


def test_injected_faults_change_exactly_what_they_say():
    inj = FaultInjector([FaultConfig(kind="lr", step=3, steps=2, factor=3.0), FaultConfig(kind="nan", step=7),
                         FaultConfig(kind="garbage", step=9, persistent=True)], vocab_size=16, seed=0)
    tree = {"a": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2))}}
    for step, factor in [(2, 1.0), (3, 3.0), (4, 3.0), (5, 1.0)]:
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, factor * y),
                     inj.scale_updates(tree, _fault_state(step)), tree)
    _assert_trees_equal(inj.scale_updates(tree, _fault_state(3, rollbacks=1)), tree)  # not persistent
    assert all(np.isnan(x).all() for x in jax.tree.leaves(inj.corrupt_grads(tree, _fault_state(7))))
    _assert_trees_equal(inj.corrupt_grads(tree, _fault_state(8)), tree)
    batch = {k: jnp.full((1, 4, 8), 5, jnp.int32) for k in BATCH_KEYS}
    _assert_trees_equal(inj.corrupt_batch(batch, _fault_state(8)), batch)
    for rollbacks in (0, 3):  # persistent
        garbage = inj.corrupt_batch(batch, _fault_state(9, rollbacks))
        assert (garbage["inputs"] != 5).mean() > 0.8 and (garbage["targets"] != garbage["inputs"]).mean() > 0.8
        assert int(garbage["inputs"].min()) >= 0 and int(garbage["inputs"].max()) < 16
        for k in ("segment_ids", "positions", "loss_mask"):
            np.testing.assert_array_equal(garbage[k], batch[k])


def test_fault_hits_follow_steps_and_persistence():
    lr = FaultConfig(kind="lr", step=10, steps=3)
    nan = FaultConfig(kind="nan", step=11, persistent=True)
    inj = FaultInjector([lr, nan], vocab_size=8, seed=0)
    assert [len(inj.hits(s, 0)) for s in (9, 10, 11, 12, 13)] == [0, 1, 2, 1, 0]
    assert inj.hits(10, rollbacks=1) == [] and inj.hits(11, rollbacks=2) == [nan]


def test_config_checks_name_the_key():
    base = {}
    with pytest.raises(ConfigError, match=r"faults\[0\]\.kind is 'typo'"):
        config_from_dict(base, ["faults=[{kind: typo}]"])
    with pytest.raises(ConfigError, match="spikes.max_flags"):
        config_from_dict(base, ["spikes.window=3", "spikes.max_flags=4"])
    with pytest.raises(ConfigError, match="spikes.lr_factor"):
        config_from_dict(base, ["spikes.lr_factor=2"])
    with pytest.raises(ConfigError, match="did you mean 'spikes.grad_z'"):
        config_from_dict(base, ["spikes.grad_zz=3"])


# ----------------------------------------------------------------------------------------------
# The monitor's decisions (host only)


class _Log:
    def __init__(self):
        self.entries = []

    def record(self, kind, step, **details):
        self.entries.append({"kind": kind, "step": step, **details})

    def kinds(self):
        return [e["kind"] for e in self.entries]


def _monitor(**cfg):
    log = _Log()
    return spikes.SpikeMonitor(SpikesConfig(**cfg), log), log


def _clean(m, step, loss_z=0.0):
    return m.observe(step, loss=2.0, grad_norm=1.0, loss_z=loss_z, grad_z=0.0, skipped=0)


def _flag(m, step):
    return m.observe(step, loss=9.0, grad_norm=50.0, loss_z=20.0, grad_z=20.0, skipped=1)


def test_k_flags_within_the_window_trigger_with_the_onset():
    m, log = _monitor(window=10, max_flags=3)
    for s in range(1, 50):
        assert _clean(m, s) is None
    assert _flag(m, 50) is None and not m.safe_to_save()
    assert _clean(m, 51) is None and _flag(m, 55) is None
    trigger = _flag(m, 59)
    assert trigger == spikes.Trigger(step=59, onset=50, reason="3 of the last 10 steps flagged",
                                     flagged_steps=[50, 55, 59])
    assert log.kinds() == ["skip"] * 3


def test_isolated_flags_do_not_trigger_and_the_episode_ends():
    m, _ = _monitor(window=10, max_flags=3)
    for s in range(1, 60):
        trigger = _flag(m, s) if s in (10, 19, 28, 37) else _clean(m, s)
        assert trigger is None
    assert m.safe_to_save()


def test_sustained_high_loss_triggers():
    m, _ = _monitor(sustain_z=3.0, sustain_steps=5)
    for s in range(1, 30):
        _clean(m, s)
    for s in range(30, 34):
        assert _clean(m, s, loss_z=4.0) is None
    _clean(m, 34, loss_z=1.0)  # broken streak
    for s in range(35, 39):
        assert _clean(m, s, loss_z=4.0) is None
    trigger = _clean(m, 39, loss_z=4.0)
    assert trigger.onset == 30 and trigger.reason == "loss z-score above 3 for 5 steps"


def test_rollback_target_is_the_last_verified_checkpoint_before_the_onset():
    m, log = _monitor(window=10, max_flags=2, skip_margin=7, lr_factor=0.5, lr_steps=100)
    for s in range(1, 70):
        if s in (20, 40, 60):
            m.checkpoint_saved(s)
        if s == 61:
            _flag(m, s)  # checkpoint 60's parameters gave a flagged step: not good
        else:
            _clean(m, s)
    m.checkpoint_saved(70)  # saved just before the onset became visible
    assert m.good_checkpoints() == [20, 40] and m.state_dict() == {"good_checkpoints": [20, 40]}
    _flag(m, 71)
    trigger = _flag(m, 72)
    assert trigger.onset == 61  # less than a window after step 61's flag: the same episode
    plan = m.plan_rollback(trigger, available=[20, 40, 60, 70], lr_scale_now=0.5)
    assert (plan.to_step, plan.data_steps, plan.steps_lost) == (40, (41, 79), 32)
    assert (plan.lr_scale, plan.lr_until, plan.number) == (0.25, 140, 1)
    m.rolled_back(plan, skipped_batches=39)
    assert m.rollbacks == 1 and m.good_checkpoints() == [20, 40] and m.safe_to_save()
    assert log.entries[-1] == {"kind": "rollback", "step": 72, "number": 1, "to_step": 40, "onset": 61,
                               "reason": "2 of the last 10 steps flagged", "steps_lost": 32,
                               "skipped_data_steps": [41, 79], "skipped_batches": 39, "lr_scale": 0.25,
                               "lr_until": 140}
    # A checkpoint that was deleted meanwhile is no target.
    m2, _ = _monitor(window=10, max_flags=1)
    m2.checkpoint_saved(20)
    for s in range(1, 30):
        _clean(m2, s)
    assert m2.plan_rollback(_flag(m2, 30), available=[20]).to_step == 20


def test_halts_after_max_rollbacks_with_the_history():
    m, log = _monitor(window=10, max_flags=1, max_rollbacks=1)
    m.checkpoint_saved(10)
    for s in range(1, 20):
        _clean(m, s)
    m.rolled_back(m.plan_rollback(_flag(m, 20), available=[10]), skipped_batches=11)
    for s in range(11, 20):
        _clean(m, s)
    with pytest.raises(spikes.TrainingHalted) as e:
        m.plan_rollback(_flag(m, 20), available=[10])
    text = str(e.value)
    assert "training stopped at step 20" in text and "1 rollbacks already done (spikes.max_rollbacks)" in text
    assert "Last good checkpoint: step 10" in text and "rollback at step 20: number=1, to_step=10" in text
    assert e.value.last_good == 10 and log.kinds()[-1] == "halt"


def test_halts_when_no_checkpoint_is_good():
    m, _ = _monitor(window=10, max_flags=1)
    for s in range(1, 20):
        _clean(m, s)
    with pytest.raises(spikes.TrainingHalted, match=r"no checkpoint known to be good .*checkpoint.every_steps") as e:
        m.plan_rollback(_flag(m, 20), available=[])
    assert e.value.last_good is None


def test_push_judges_one_step_late_and_final_judges_all():
    m, log = _monitor(window=10, max_flags=5)

    def metrics(skipped):
        return {"loss": jnp.float32(2.0), "grad_norm": jnp.float32(1.0), "loss_z": jnp.float32(0.0),
                "grad_z": jnp.float32(0.0), "skipped": jnp.int32(skipped), "other": jnp.zeros(3)}
    assert m.push(1, metrics(1)) is None and log.kinds() == []
    m.push(2, metrics(0))
    assert log.entries == [{"kind": "skip", "step": 1, "loss": 2.0, "grad_norm": 1.0, "loss_z": 0.0,
                            "grad_z": 0.0, "reason": "grad-norm z 0.0 > 8"}]
    m.push(3, metrics(1), final=True)
    assert [e["step"] for e in log.entries] == [1, 3]


def test_lowered_learning_rate_compounds_and_always_ends():
    for factor, now, expected in [(0.5, 1.0, (0.5, 60)), (0.5, 0.5, (0.25, 60)), (1.0, 1.0, (1.0, -1)),
                                  (1.0, 0.5, (0.5, 60))]:  # a reduction still running must still end
        m, _ = _monitor(window=10, max_flags=1, lr_factor=factor, lr_steps=50)
        m.checkpoint_saved(10)
        for s in range(1, 20):
            _clean(m, s)
        plan = m.plan_rollback(_flag(m, 20), available=[10], lr_scale_now=now)
        assert (plan.lr_scale, plan.lr_until) == expected
