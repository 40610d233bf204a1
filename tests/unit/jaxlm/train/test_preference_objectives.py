"""The pair objectives as the train step runs them: values and gradients of reward, dpo, ipo and simpo
on a tiny model and a handful of pairs (laid out by the pair loader, one pair of padding) equal a
direct numpy computation; the frozen reference's log-probabilities equal numpy's; config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ConfigError, config_from_dict
from jaxlm.data import format as fmt
from jaxlm.data.pairs import REFERENCE_FIELD, pair_rows
from jaxlm.model import Transformer
from jaxlm.train import objective as objective_lib
from jaxlm.train import setup as setup_lib
from jaxlm.train.reference import Reference
from jaxlm.train.state import model_spec
from jaxlm.train.step import make_loss_fn

VOCAB, T = 40, 12


def config(objective="dpo", **preference):
    return config_from_dict({
        "model": dict(family="llama", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=T, init_std=0.2, reward_head=True),
        "data": {"seq_len": T},
        "train": {"objective": objective, "global_batch": 8},
        "preference": {"reference": "cached", **preference}})


def seq(rng, prompt, response):
    tokens = rng.integers(1, VOCAB, prompt + response)
    out = np.empty(len(tokens), fmt.MASKED_TOKEN)
    out["token"], out["mask"] = tokens, [0] * prompt + [1] * response
    return out


def micro_batch():
    """3 pairs (one chosen sequence longer than T + 1: cut) and one empty pair of padding."""
    rng = np.random.default_rng(0)
    shapes = [((3, 5), (3, 2)), ((1, 8), (1, 4)), ((4, 12), (4, 3))]
    pairs = [fmt.Pair(seq(rng, *c), seq(rng, *r)) for c, r in shapes]
    return pair_rows(pairs, pairs_per_batch=4, seq_len=T, reference=False)


def np_logps(graphdef, params, micro):
    """(rows,) summed log p(target) over loss-mask positions, in float64 from the model's logits."""
    model = nnx.merge(graphdef, params)
    logits = np.asarray(model(jnp.asarray(micro["inputs"]), jnp.asarray(micro["positions"]),
                              jnp.asarray(micro["segment_ids"])), np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, micro["targets"][..., None], axis=-1)[..., 0]
    return (tok * micro["loss_mask"]).sum(-1), micro["loss_mask"].sum(-1).astype(np.float64)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_direct(name, pi, ref, counts, p):
    """numpy: mean loss over the 3 real pairs, dL/dlogp per row (padding rows 0), metrics."""
    n = 3
    pc, pr, rc, rr = pi[0:6:2], pi[1:6:2], ref[0:6:2], ref[1:6:2]
    lc, lr = np.maximum(counts[0:6:2], 1), np.maximum(counts[1:6:2], 1)
    d = np.zeros(8)
    if name == "simpo":
        z = p["beta"] * (pc / lc - pr / lr) - p["gamma"]
        loss, dz = -log_sigmoid(z), -sigmoid(-z) / n
        d[0:6:2], d[1:6:2] = dz * p["beta"] / lc, -dz * p["beta"] / lr
        rew_c, rew_r = p["beta"] * pc / lc, p["beta"] * pr / lr
    elif name == "ipo":
        if p.get("ipo_average", True):
            dc, dr = 1 / lc, 1 / lr
        else:
            dc, dr = np.ones(n), np.ones(n)
        h = (pc - rc) * dc - (pr - rr) * dr - 1 / (2 * p["beta"])
        loss = h ** 2
        d[0:6:2], d[1:6:2] = 2 * h * dc / n, -2 * h * dr / n
        rew_c, rew_r = p["beta"] * (pc - rc) * dc, p["beta"] * (pr - rr) * dr
    else:
        ls = p.get("label_smoothing", 0.0)
        h = p["beta"] * ((pc - rc) - (pr - rr))
        loss = -(1 - ls) * log_sigmoid(h) - ls * log_sigmoid(-h)
        dh = (-(1 - ls) * sigmoid(-h) + ls * sigmoid(h)) / n
        d[0:6:2], d[1:6:2] = dh * p["beta"], -dh * p["beta"]
        rew_c, rew_r = p["beta"] * (pc - rc), p["beta"] * (pr - rr)
    if p.get("rpo_alpha"):  # plus alpha * the chosen response's mean per-token NLL
        loss = loss - p["rpo_alpha"] * pc / lc
        d[0:6:2] -= p["rpo_alpha"] / lc / n
    metrics = {"rewards_chosen": rew_c.mean(), "rewards_rejected": rew_r.mean(), "reward_margin": (rew_c - rew_r).mean(),
               "reward_accuracy": (rew_c > rew_r).mean(), "logp_chosen": pc.mean(), "logp_rejected": pr.mean()}
    return loss.mean(), d, metrics


CASES = [("dpo", {"beta": 0.3}), ("dpo", {"beta": 0.3, "label_smoothing": 0.1}), ("ipo", {"beta": 0.3}),
         ("ipo", {"beta": 0.3, "ipo_average": False}), ("simpo", {"beta": 2.0, "gamma": 0.5}),
         ("dpo", {"beta": 0.3, "rpo_alpha": 0.7})]


@pytest.fixture(scope="module")
def models():
    cfg = config().model
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    create = jax.jit(lambda key: nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=key)))))
    return graphdef, create(jax.random.key(1)), create(jax.random.key(2))


def test_dpo_ipo_simpo_values_and_gradients_equal_numpy(models):
    graphdef, params, ref_params = models
    micro = micro_batch()
    pi, counts = np_logps(graphdef, params, micro)
    ref, _ = np_logps(graphdef, ref_params, micro)
    ref_field = np.zeros((8, T), np.float32)
    ref_field[:, 0] = ref  # as cached records carry it: the row's total at position 0
    batch = {k: jnp.asarray(v) for k, v in micro.items()} | {REFERENCE_FIELD: jnp.asarray(ref_field)}

    def per_row(p):  # the policy's (rows,) log-probabilities, for the chain rule
        model = nnx.merge(graphdef, p)
        logits = model(batch["inputs"], batch["positions"], batch["segment_ids"])
        logp = jax.nn.log_softmax(logits, -1)
        return jnp.sum(jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0] * batch["loss_mask"], -1)

    fns = []
    for name, p in CASES:
        cfg = config(name, **p)
        fns.append(make_loss_fn(cfg, model_spec(cfg), objective_lib.build(cfg), train=True))

    @jax.jit  # one compile for every case and the chain-rule reference
    def run(q, cotangents_CR):
        out = []
        for loss_fn in fns:
            def mean_loss(q, loss_fn=loss_fn):
                total, sums = loss_fn(q, batch, None)
                return total / sums.weight, sums
            out.append(jax.value_and_grad(mean_loss, has_aux=True)(q))
        _, vjp = jax.vjp(per_row, q)  # sum_rows dL/dlogp_row * grad logp_row, per case
        return out, jax.vmap(lambda c: vjp(c)[0])(cotangents_CR)

    direct = [np_direct(name, pi, ref, counts, p) for name, p in CASES]
    out, chains = run(params, jnp.asarray(np.stack([d[1] for d in direct]), jnp.float32))
    for k, ((name, p), (want, _, metrics), ((value, sums), grads)) in enumerate(zip(CASES, direct, out)):
        assert float(sums.weight) == 3.0  # the padding pair does not count
        assert float(value) == pytest.approx(want, rel=2e-5), (name, p)
        assert float(sums.metrics["loss"] / sums.weight) == pytest.approx(want, rel=2e-5)
        for key, v in metrics.items():
            assert float(sums.metrics[key] / sums.weight) == pytest.approx(v, rel=1e-4, abs=1e-5), (name, key)
        for (path, g), e in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(chains)):
            e = np.asarray(e[k])
            np.testing.assert_allclose(np.asarray(g), e, rtol=1e-4, atol=1e-5 * max(np.abs(e).max(), 1e-3),
                                       err_msg=f"{name} {p} {jax.tree_util.keystr(path)}")
    # the reward head takes no part in the DPO family's loss
    assert all(float(jnp.abs(g["reward_head"]).max()) == 0.0 for (_, _), g in out)


def test_reward_objective_value_and_gradient_equal_numpy(models):
    graphdef, params, _ = models
    micro = micro_batch()
    batch = {k: jnp.asarray(v) for k, v in micro.items()}
    model = nnx.merge(graphdef, params)
    h = np.asarray(model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"]), np.float64)
    last = [int(np.flatnonzero(row > 0).max()) if (row > 0).any() else 0 for row in micro["segment_ids"]]
    assert last[:6] == [7, 4, 8, 4, 11, 6]  # prompt + response - 1 (the cut chosen row: its window's end)
    w = np.asarray(params["reward_head"], np.float64)
    h_last = h[np.arange(8), last]
    s = h_last @ w
    margin = 0.25
    z = s[0:6:2] - s[1:6:2] - margin
    want = -log_sigmoid(z).mean()
    ds = np.zeros(8)
    ds[0:6:2], ds[1:6:2] = -sigmoid(-z) / 3, sigmoid(-z) / 3

    cfg = config("reward", margin=margin)
    loss_fn = make_loss_fn(cfg, model_spec(cfg), objective_lib.build(cfg), train=True)

    def mean_loss(q):
        total, sums = loss_fn(q, batch, None)
        return total / sums.weight, sums

    def scores(q):
        m = nnx.merge(graphdef, q)
        hh = m.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
        return m.scores(hh)[jnp.arange(8), jnp.asarray(last)]

    @jax.jit
    def run(q, cotangent):
        _, vjp = jax.vjp(scores, q)
        return jax.value_and_grad(mean_loss, has_aux=True)(q), vjp(cotangent)[0]

    ((value, sums), grads), chain = run(params, jnp.asarray(ds, jnp.float32))
    assert float(value) == pytest.approx(want, rel=1e-5)
    assert float(sums.metrics["accuracy"] / sums.weight) == pytest.approx(np.mean(s[0:6:2] > s[1:6:2]))
    assert float(sums.metrics["score_margin"] / sums.weight) == pytest.approx(np.mean(s[0:6:2] - s[1:6:2]), rel=1e-5)
    # dL/dw = sum_rows dL/ds_row * h_last_row, in closed form
    np.testing.assert_allclose(np.asarray(grads["reward_head"]), ds @ h_last, rtol=1e-4, atol=1e-7)
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(chain)):
        e = np.asarray(e)
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-4, atol=1e-5 * max(np.abs(e).max(), 1e-3))


def test_reference_log_probabilities_on_the_mesh_equal_numpy(models):
    graphdef, _, ref_params = models
    cfg = config("dpo", beta=0.1)
    setup = setup_lib.build(cfg)
    placed = jax.device_put(ref_params, setup.shardings["params"])
    reference = Reference(setup, placed)
    micro = micro_batch()
    want, _ = np_logps(graphdef, ref_params, micro)
    stacked = setup.batch({k: np.stack([v, v]) for k, v in micro.items()})  # two micro-batches
    got = np.asarray(reference.add(stacked)[REFERENCE_FIELD])
    assert got.shape == (2, 8, T) and np.all(got[:, micro["loss_mask"] == 0] == 0)
    np.testing.assert_allclose(got.sum(-1), np.stack([want, want]), rtol=1e-5, atol=1e-5)
    one = np.asarray(reference.add(setup.batch(micro, leading=0), leading=0)[REFERENCE_FIELD])
    np.testing.assert_array_equal(one, got[0])


def test_pair_objective_config_errors():
    with pytest.raises(ConfigError, match="must be even"):
        config_from_dict({"train": {"objective": "dpo", "global_batch": 6, "micro_batch": 3},
                          "preference": {"reference": "cached"}})
    with pytest.raises(ConfigError, match="model.reward_head=true"):
        config_from_dict({"train": {"objective": "reward"}})
    with pytest.raises(ConfigError, match="set init.from"):
        config_from_dict({"train": {"objective": "ipo"}})
    config_from_dict({"train": {"objective": "simpo"}})  # reference-free: needs no reference
    with pytest.raises(ConfigError, match="choose one of model, cached"):
        config_from_dict({"preference": {"reference": "disk"}})
    with pytest.raises(ConfigError, match="label_smoothing"):
        config_from_dict({"preference": {"label_smoothing": 0.5}})
    with pytest.raises(ConfigError, match="known objectives: .*dpo.*reward"):
        objective_lib.build(config_from_dict({"train": {"objective": "dpoo"}}))
