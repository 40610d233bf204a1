"""Instruction tuning through the one loop: the next-token objective over masked records trains on
response tokens only — prompt tokens contribute exactly nothing to the gradient — averaged per
response token over the batch; LoRA trains the adapters alone."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.model import Transformer
from jaxlm.train import objective as objective_lib
from jaxlm.train.state import build_optimizer, model_spec
from jaxlm.train.step import make_loss_fn
from tests.helpers import tiny_config


def _batch(seed=0, rows=4, seq_len=16, vocab=96):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (rows, seq_len + 1))
    mask = np.zeros((rows, seq_len), np.int32)
    mask[:, seq_len // 2:] = 1  # the second half of each row is the response
    mask[0, :] = 0  # a row that is all prompt
    return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], segment_ids=np.ones((rows, seq_len), np.int32),
                positions=np.broadcast_to(np.arange(seq_len), (rows, seq_len)), loss_mask=mask)


def test_prompt_tokens_contribute_exactly_nothing():
    config = tiny_config("llama")
    spec = model_spec(config)
    model = Transformer(config.model, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model))
    loss_fn = make_loss_fn(config, spec, objective_lib.build(config), train=True)

    def grad_of(batch):
        micro = {k: jnp.asarray(v) for k, v in batch.items()}
        (obj, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, micro, None)
        return obj, sums, grads

    batch = _batch()
    obj, sums, grads = grad_of(batch)
    other = dict(batch)  # every prompt target replaced: nothing may change
    other["targets"] = np.where(batch["loss_mask"] == 1, batch["targets"], (batch["targets"] + 13) % 96)
    obj2, sums2, grads2 = grad_of(other)
    assert float(obj) == float(obj2) and float(sums.weight) == float(sums2.weight) == 3 * 8
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    changed = dict(batch)  # a response target changed: the gradient moves
    changed["targets"] = batch["targets"].copy()
    changed["targets"][1, -1] = (changed["targets"][1, -1] + 13) % 96
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grad_of(changed)[2])))
    # per response token: the objective is the sum of the response tokens' NLL (divided by the
    # batch's response-token count once per batch in the step)
    logits = np.asarray(model(jnp.asarray(batch["inputs"]), jnp.asarray(batch["positions"]),
                              jnp.asarray(batch["segment_ids"])), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums.metrics["loss"]), (nll * batch["loss_mask"]).sum(), rtol=1e-5)


def test_lora_optimizer_state_holds_only_adapters():
    config = tiny_config("llama", model={"lora": {"rank": 4, "targets": ["q", "v", "down"]}})
    spec = model_spec(config)
    optimizer = build_optimizer(config, spec)
    state = jax.eval_shape(optimizer.init, spec.shapes)
    sizes = sum(np.prod(x.shape) for x in jax.tree.leaves(state) if x.ndim)
    adapters = sum(np.prod(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(spec.shapes)[0]
                   if "lora" in jax.tree_util.keystr(p))
    assert adapters > 0 and sizes == 2 * adapters  # Adam's two moments, of the adapters alone
