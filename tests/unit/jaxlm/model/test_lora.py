"""LoRA: a fresh adapter leaves the model as it was, adapters have sharding rules, merging folds them
into the weights exactly, the optimizer holds and updates only adapters, and the transformers export
of a tuned model gives the unmerged model's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlm.config import ConfigError, MeshConfig, OptimConfig
from jaxlm.interop import export_hf, load_hf
from jaxlm.model import Transformer
from jaxlm.model.lora import add_adapters, is_adapter, merge_lora, without_lora
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train.optimizer import make_optimizer, only_trainable, trainable_mask
from tests.helpers import tiny_config

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 16)))
ALL = ["q", "k", "v", "o", "up", "gate", "down"]


def lora_cfg(family="llama", rank=4, targets=ALL, **lora):
    targets = [t for t in targets if family == "llama" or t != "gate"]
    return tiny_config(family, seq_len=32, model={"vocab_size": 96, "init_std": 0.2,
                                                  "lora": dict(rank=rank, alpha=8.0, targets=targets, **lora)}).model


def tuned(cfg, seed=0):
    """A LoRA model whose B matrices are random too, as after some training: they move the logits
    by several units (a far larger change than tuning makes), so merging has something to fold."""
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model))
    keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(next(keys), x.shape) if str(p[-1].key) == "lora_b" else x, params)
    nnx.update(model, params)
    return model, params


def run(model, tokens=TOKENS, key=None):
    """The model's logits (in training mode when given a dropout key), compiled: eager is slower."""
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, t, k: nnx.merge(graphdef, p)(t, dropout_key=k))
    return np.asarray(forward(params, tokens, key))


def adapters_of(params):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)
            if is_adapter(tuple(k.key for k in p))}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_fresh_adapter_leaves_the_model_bit_for_bit(family):
    base = Transformer(tiny_config(family, seq_len=32, model={"vocab_size": 96, "init_std": 0.2}).model, rngs=nnx.Rngs(0))
    lora = Transformer(lora_cfg(family), rngs=nnx.Rngs(0))
    base_params = nnx.to_pure_dict(nnx.state(base))
    lora_params = nnx.to_pure_dict(nnx.state(lora))
    assert len(adapters_of(lora_params)) == 2 * (7 if family == "llama" else 6)
    # The base weights are those of the model without adapters (A's key derives from its kernel's).
    np.testing.assert_array_equal(np.asarray(lora_params["blocks"]["attn"]["q"]["kernel"]),
                                  np.asarray(base_params["blocks"]["attn"]["q"]["kernel"]))
    assert merge_lora(lora_params, lora.cfg).keys() == base_params.keys()
    np.testing.assert_array_equal(run(lora), run(base))  # B = 0


def test_rank_zero_is_the_plain_model():
    cfg = tiny_config("llama", seq_len=32, model={"vocab_size": 96, "init_std": 0.2, "lora": dict(rank=0, targets=ALL)}).model
    plain = tiny_config("llama", seq_len=32, model={"vocab_size": 96, "init_std": 0.2}).model
    a = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0))))
    b = nnx.to_pure_dict(nnx.state(Transformer(plain, rngs=nnx.Rngs(0))))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_adapters_have_sharding_rules():
    model = Transformer(lora_cfg("llama"), rngs=nnx.Rngs(0))
    axes = rules.logical_axes(model)
    assert axes["blocks"]["attn"]["q"]["lora_a"] == ("layers", "embed", "lora")
    assert axes["blocks"]["attn"]["q"]["lora_b"] == ("layers", "lora", "heads", "kv")
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    shardings = rules.param_shardings(axes, nnx.to_pure_dict(nnx.state(model, nnx.Param)), mesh)
    # A is split like its kernel's input dim, B like its output dims; the rank stays whole.
    assert tuple(shardings["blocks"]["attn"]["q"]["lora_a"].spec) == (None, "fsdp", None)
    assert tuple(shardings["blocks"]["mlp"]["down"]["lora_b"].spec) == (None, None, "fsdp")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_merge_folds_adapters_into_the_weights(family):
    cfg = lora_cfg(family)
    model, params = tuned(cfg)
    merged = merge_lora(params, cfg)
    plain = nnx.merge(nnx.graphdef(Transformer(without_lora(cfg), rngs=nnx.Rngs(0))), merged)
    ours, theirs = run(model), run(plain)
    assert np.abs(ours - run(Transformer(without_lora(cfg), rngs=nnx.Rngs(0)))).max() > 0.1
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


def test_adapter_dropout_only_with_a_key():
    cfg = lora_cfg("llama", dropout=0.5)
    model, _ = tuned(cfg)
    plain, _ = tuned(lora_cfg("llama"))  # the same weights without adapter dropout
    no_key = run(model, key=None)
    np.testing.assert_array_equal(no_key, run(plain, key=None))
    k1, k2 = run(model, key=jax.random.key(1)), run(model, key=jax.random.key(2))
    assert np.abs(k1 - run(plain, key=jax.random.key(1))).max() > 1e-3
    assert np.abs(k1 - k2).max() > 1e-3
    # Without adapter dropout a key changes nothing (the model has no other dropout).
    np.testing.assert_array_equal(run(plain, key=jax.random.key(1)), run(plain, key=None))


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_optimizer_holds_and_moves_only_adapters(name):
    cfg = lora_cfg("llama")
    model, params = tuned(cfg)
    axes = rules.logical_axes(model)
    optimizer = make_optimizer(OptimConfig(name=name, lr=1e-2, weight_decay=0.1), 10, axes)
    lora_tx = only_trainable(optimizer, trainable_mask(params, lora=True))
    state = lora_tx.init(params)
    adapter_shapes = sorted(x.shape for x in adapters_of(params).values())
    big = [x.shape for x in jax.tree.leaves(state) if x.size > 1]  # moments, not counters
    assert big and all(s in adapter_shapes for s in big), big
    full_bytes = sum(x.nbytes for x in jax.tree.leaves(optimizer.init(params)))
    lora_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    assert lora_bytes < full_bytes / 5

    graphdef = nnx.graphdef(model)

    def loss(p):
        logits = nnx.merge(graphdef, p)(TOKENS[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, TOKENS[:, 1:]).mean()

    grads = jax.jit(jax.grad(loss))(params)
    updates, state = lora_tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    for (path, old), now in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(new)):
        if is_adapter(tuple(k.key for k in path)):
            assert np.abs(np.asarray(now) - np.asarray(old)).max() > 0, path
        else:
            np.testing.assert_array_equal(np.asarray(now), np.asarray(old), err_msg=str(path))
    assert all(jax.tree.leaves(trainable_mask(params, lora=False)))


def test_bad_lora_configs_are_refused():
    with pytest.raises(ConfigError, match="model.lora.targets"):
        lora_cfg("gpt2", targets=["gate"])  # gpt2 has no gate; lora_cfg drops it, leaving none
    with pytest.raises(ConfigError, match="model.lora.targets.*q, k, v, o, up, gate, down"):
        lora_cfg("llama", targets=["qkv"])
    with pytest.raises(ConfigError, match="model.lora.rank"):
        lora_cfg("llama", rank=-1)
    with pytest.raises(ConfigError, match="model.lora.dropout"):
        lora_cfg("llama", dropout=1.0)


def test_merged_export_gives_the_unmerged_logits_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    cfg = lora_cfg("llama")
    model, params = tuned(cfg)
    export_hf(cfg, params, str(tmp_path), eos_id=3)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert not any("lora" in k for k in hf.state_dict())
    with torch.no_grad():
        theirs = hf(torch.tensor(np.asarray(TOKENS))).logits.numpy()
    ours = run(model)
    assert np.abs(ours).max() > 1.0
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    back_cfg, _ = load_hf(str(tmp_path))
    assert back_cfg.lora.rank == 0


def test_adapters_added_to_plain_weights_start_from_them():
    cfg = lora_cfg("llama")
    _, tuned_params = tuned(without_lora(cfg), seed=3)  # "pre-trained" plain weights
    params = add_adapters(tuned_params, cfg, jax.random.key(5))
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    nnx.update(model, params)  # the tree of a LoRA model
    assert len(adapters_of(params)) == 14
    assert all(not np.any(np.asarray(b)) for k, b in adapters_of(params).items() if "lora_b" in k)
    np.testing.assert_array_equal(run(model), run(nnx.merge(nnx.graphdef(Transformer(without_lora(cfg), rngs=nnx.Rngs(0))),
                                                            tuned_params)))
