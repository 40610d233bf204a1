"""DPO, IPO and SimPO (values and gradients) against a direct numpy computation on a tiny model and
a handful of pairs; the Bradley-Terry loss; GRPO/RLOO advantages, GAE and the KL estimators against
hand computations on fixed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.train import advantages as A
from jaxlm.train import preference as P
from tests.helpers import random_params, tiny_config

VOCAB, T = 48, 12


def pairs(seed=0, n=5):
    """Token rows prompt + response, and a mask on the response targets, for chosen and rejected."""
    rng = np.random.default_rng(seed)
    rows, masks = [], []
    for _ in range(2 * n):
        prompt = rng.integers(1, 5)
        tokens = rng.integers(0, VOCAB, T + 1)
        length = rng.integers(2, T - prompt + 1)
        mask = np.zeros(T, np.float32)
        mask[prompt - 1:prompt - 1 + length] = 1.0  # targets t+1 for t in the response
        rows.append(tokens)
        masks.append(mask)
    rows, masks = np.array(rows), np.array(masks)
    return rows[:n], masks[:n], rows[n:], masks[n:]


def model_fn(seed):
    cfg = tiny_config("llama", seq_len=T, model={"vocab_size": VOCAB, "max_seq_len": T, "init_std": 0.2}).model
    _, graphdef, params = random_params(cfg, seed=seed)
    return graphdef, params


def logits_of(graphdef, params, tokens):
    model = nnx.merge(graphdef, params)
    inputs = jnp.asarray(tokens[:, :-1])
    positions = jnp.broadcast_to(jnp.arange(T), inputs.shape)
    return model(inputs, positions, jnp.ones_like(inputs))


def numpy_logps(graphdef, params, tokens, mask):
    logits = np.asarray(logits_of(graphdef, params, tokens), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    tok = np.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return (tok * mask).sum(-1), mask.sum(-1)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# numpy: (loss, dL/dpi_c, dL/dpi_r) per loss; the mean over pairs
def np_dpo(pc, pr, rc, rr, beta, ls=0.0):
    h = beta * ((pc - rc) - (pr - rr))
    loss = -(1 - ls) * np.log(sigmoid(h)) - ls * np.log(sigmoid(-h))
    dh = (-(1 - ls) * sigmoid(-h) + ls * sigmoid(h)) / len(pc)
    return loss.mean(), dh * beta, -dh * beta


def np_ipo(pc, pr, rc, rr, beta):
    d = (pc - rc) - (pr - rr) - 1 / (2 * beta)
    return (d ** 2).mean(), 2 * d / len(pc), -2 * d / len(pc)


def np_simpo(pc, pr, lc, lr, beta, gamma):
    z = beta * pc / lc - beta * pr / lr - gamma
    dz = -sigmoid(-z) / len(pc)
    return -np.log(sigmoid(z)).mean(), dz * beta / lc, -dz * beta / lr


LOSSES = ("dpo", "dpo_smoothed", "ipo", "simpo")


def test_losses_and_gradients_equal_numpy():
    graphdef, params = model_fn(1)
    ref_graphdef, ref_params = model_fn(2)
    chosen, mask_c, rejected, mask_r = pairs()
    pc, lc = numpy_logps(graphdef, params, chosen, mask_c)
    pr, lr = numpy_logps(graphdef, params, rejected, mask_r)
    rc, _ = numpy_logps(ref_graphdef, ref_params, chosen, mask_c)
    rr, _ = numpy_logps(ref_graphdef, ref_params, rejected, mask_r)
    ref_c, ref_r = jnp.asarray(rc, jnp.float32), jnp.asarray(rr, jnp.float32)

    def seq_logps(p, tokens, mask):
        return P.sequence_logprobs(logits_of(graphdef, p, tokens), jnp.asarray(tokens[:, 1:]), jnp.asarray(mask))

    def loss_fn(p, name):
        (jc, jlc), (jr, jlr) = seq_logps(p, chosen, mask_c), seq_logps(p, rejected, mask_r)
        if name == "dpo":
            return P.dpo(jc, jr, ref_c, ref_r, beta=0.3)
        if name == "dpo_smoothed":
            return P.dpo(jc, jr, ref_c, ref_r, beta=0.3, label_smoothing=0.1)
        if name == "ipo":
            return P.ipo(jc, jr, ref_c, ref_r, beta=0.3)
        return P.simpo(jc, jr, jlc, jlr, beta=2.0, gamma=0.5)

    @jax.jit  # one compile for every loss and the chain-rule reference
    def all_grads(p, cotangents):
        out = {name: jax.value_and_grad(loss_fn, has_aux=True)(p, name) for name in LOSSES}
        chain = {}
        for name, (d_c, d_r) in cotangents.items():
            _, vjp_c = jax.vjp(lambda q: seq_logps(q, chosen, mask_c)[0], p)
            _, vjp_r = jax.vjp(lambda q: seq_logps(q, rejected, mask_r)[0], p)
            chain[name] = jax.tree.map(lambda a, b: a + b, vjp_c(d_c)[0], vjp_r(d_r)[0])
        return out, chain

    direct = {"dpo": np_dpo(pc, pr, rc, rr, 0.3), "dpo_smoothed": np_dpo(pc, pr, rc, rr, 0.3, 0.1),
              "ipo": np_ipo(pc, pr, rc, rr, 0.3), "simpo": np_simpo(pc, pr, lc, lr, 2.0, 0.5)}
    cotangents = {n: (jnp.asarray(d[1], jnp.float32), jnp.asarray(d[2], jnp.float32)) for n, d in direct.items()}
    out, chain = all_grads(params, cotangents)
    for name in LOSSES:
        (loss, metrics), grads = out[name]
        assert float(loss) == pytest.approx(direct[name][0], rel=1e-5), name
        # chain rule with numpy's dL/dlogp: sum_i dL/dpi_c_i * grad pi_c_i + dL/dpi_r_i * grad pi_r_i;
        # float32 sums over opposite-signed terms: compare against the gradient's own scale
        for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(chain[name])):
            e = np.asarray(e)
            np.testing.assert_allclose(np.asarray(g), e, rtol=1e-4, atol=1e-5 * np.abs(e).max(), err_msg=name)
        if name.startswith("dpo"):  # implicit rewards: beta * (log pi - log ref), as TRL logs them
            assert float(metrics["rewards_chosen"]) == pytest.approx(float(np.mean(0.3 * (pc - rc))), rel=1e-5)
            assert float(metrics["reward_accuracy"]) == pytest.approx(float(np.mean(pc - rc > pr - rr)))


def test_dpo_sign_convention():
    """The loss falls as the policy raises the chosen response over the reference: -log sigmoid(beta * margin)."""
    loss_up, _ = P.dpo(jnp.array([-1.0]), jnp.array([-5.0]), jnp.array([-3.0]), jnp.array([-3.0]), beta=0.5)
    loss_down, _ = P.dpo(jnp.array([-5.0]), jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-3.0]), beta=0.5)
    assert float(loss_up) == pytest.approx(-np.log(sigmoid(0.5 * 4)), rel=1e-6)
    assert float(loss_down) == pytest.approx(-np.log(sigmoid(-0.5 * 4)), rel=1e-6)
    assert float(P.dpo(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1))[0]) == pytest.approx(np.log(2))


def test_bradley_terry():
    loss, m = P.bradley_terry(jnp.array([2.0, 0.0]), jnp.array([1.0, 1.0]), margin=jnp.array([0.5, 0.0]))
    assert float(loss) == pytest.approx(np.mean([-np.log(sigmoid(0.5)), -np.log(sigmoid(-1.0))]), rel=1e-6)
    assert float(m["accuracy"]) == 0.5


def test_group_advantages_by_hand():
    r = jnp.array([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    std0 = np.sqrt(4 * 0.25 / 3)  # ddof=1
    np.testing.assert_allclose(A.grpo_advantages(r)[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std0 + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(A.grpo_advantages(r, scale=False)[1], [1.0, -1.0, 0.0, 0.0])
    np.testing.assert_allclose(A.rloo_advantages(r)[1], [3 - 5 / 3, 1 - 7 / 3, 2 - 2, 2 - 2], rtol=1e-6)
    np.testing.assert_allclose(A.grpo_advantages(jnp.ones((1, 3))), np.zeros((1, 3)))  # equal rewards: no signal
    with pytest.raises(ValueError):
        A.rloo_advantages(jnp.ones((2, 1)))


def test_gae_by_hand():
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0]])
    values = jnp.array([[0.5, 0.4, 0.6, 9.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])  # three response tokens; the last slot is padding
    adv, ret = A.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.6  # last step: V after it is 0
    d1 = 0.0 + 0.9 * 0.6 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2, a1 = d2, d1 + 0.72 * d2
    a0 = d0 + 0.72 * a1
    np.testing.assert_allclose(adv, [[a0, a1, a2, 0.0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ret, [[a0 + 0.5, a1 + 0.4, a2 + 0.6, 0.0]], rtol=1e-6, atol=1e-7)


def test_kl_estimators_and_clipping():
    logp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0])
    np.testing.assert_allclose(A.kl_k1(logp, ref), [0.5, -1.0])
    np.testing.assert_allclose(A.kl_k3(logp, ref), [np.exp(-0.5) + 0.5 - 1, np.exp(1.0) - 1.0 - 1], rtol=1e-6)
    # k1 and k3 are both unbiased for KL(p || q) under samples of p
    rng = np.random.default_rng(0)
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.5, 0.3, 0.2])
    x = rng.choice(3, size=200_000, p=p)
    kl = float(np.sum(p * np.log(p / q)))
    for est in (A.kl_k1, A.kl_k3):
        assert float(np.mean(est(jnp.log(p)[x], jnp.log(q)[x]))) == pytest.approx(kl, abs=3e-3)
    loss, clipped = A.clipped_objective(jnp.log(jnp.array([1.5, 0.5, 1.1])), jnp.zeros(3), jnp.array([1.0, -1.0, 1.0]))
    np.testing.assert_allclose(loss, [-1.2, 0.8, -1.1], rtol=1e-6)
    np.testing.assert_allclose(clipped, [1.0, 1.0, 0.0])
