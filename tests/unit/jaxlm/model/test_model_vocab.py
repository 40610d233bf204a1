"""Growing a trained model's vocabulary for new special tokens leaves it unchanged on old text."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.model import Transformer
from jaxlm.model.vocab import grow_rows, grow_vocab


@pytest.mark.parametrize("tied", [True, False])
def test_old_logits_unchanged_and_new_rows_at_the_mean(tied):
    cfg = ModelConfig(family="llama" if tied else "gpt2", vocab_size=48, d_model=32, n_layers=2, n_heads=4,
                      max_seq_len=16, tie_embeddings=tied)
    model = Transformer(cfg, rngs=nnx.Rngs(3))
    old_text = jnp.array([[5, 9, 44, 1, 0, 47, 12, 30]])
    before = np.asarray(model(old_text))
    embed = np.asarray(model.embed[...])
    grow_vocab(model, 52)  # four chat tokens
    after = np.asarray(model(old_text))
    assert after.shape == (1, 8, 52) and model.cfg.vocab_size == 52
    np.testing.assert_array_equal(after[..., :48], before)  # bit for bit on the old vocabulary
    np.testing.assert_array_equal(np.asarray(model.embed[...])[:48], embed)
    # float32 sums in another order: equal to a few ulps of the entries' size (~0.02)
    np.testing.assert_allclose(np.asarray(model.embed[...])[48:], np.broadcast_to(embed.mean(0, dtype=np.float64), (4, 32)),
                               rtol=0, atol=1e-8)
    # a new token's logit is the mean of the old logits (its unembedding is their mean)
    np.testing.assert_allclose(after[..., 48:], np.broadcast_to(before.mean(-1, keepdims=True), (1, 8, 4)), rtol=1e-4, atol=1e-5)
    new_text = jnp.array([[5, 50, 9, 51]])
    assert np.isfinite(np.asarray(model(new_text))).all()


def test_padding_rows_past_the_tokenizer_are_reset_and_bad_sizes_fail():
    table = jnp.arange(12.0).reshape(6, 2)  # rows 4, 5: padding never trained
    grown = grow_rows(table, 8, trained=4, axis=0)
    np.testing.assert_array_equal(grown[:4], table[:4])
    np.testing.assert_array_equal(grown[4:], np.broadcast_to(np.asarray(table[:4]).mean(0), (4, 2)))
    with pytest.raises(ValueError, match="new size"):
        grow_rows(table, 5, trained=4, axis=0)
