"""Growing a trained model's vocabulary for new tokens (chat special tokens) without changing it on old text.

New rows of the embedding (and of the unembedding, when it is not tied) start at the mean of the
trained rows: a new token's input looks like an average token, and its logit is the average of
the old logits, so it takes a modest share of the probability instead of a random one, and
training moves it from there. The old rows are copied bit for bit, so on text without the new
tokens the logits over the old vocabulary are exactly what they were.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxlm.model.transformer import Transformer


def grow_rows(table, new_size: int, trained: int, axis: int):
    """`table` with `new_size` entries along `axis`: entries [0, trained) kept, the rest their mean."""
    old = table.shape[axis]
    if not 0 < trained <= old <= new_size:
        raise ValueError(f"need 0 < trained ({trained}) <= current size ({old}) <= new size ({new_size})")
    kept = jnp.take(table, jnp.arange(trained), axis=axis)
    mean = jnp.mean(kept.astype(jnp.float32), axis=axis, keepdims=True).astype(table.dtype)
    new_shape = list(table.shape)
    new_shape[axis] = new_size - trained
    return jnp.concatenate([kept, jnp.broadcast_to(mean, new_shape)], axis=axis)


def grow_vocab(model: Transformer, vocab_size: int, trained: int | None = None) -> Transformer:
    """Gives `model` (in place) `vocab_size` token rows; returns it.

    trained: how many leading rows are real trained tokens (the old tokenizer's size); None = the
      model's current vocab_size. Rows from `trained` on (new tokens, and padding rows of a vocab
      padded past its tokenizer) are set to the mean of the trained rows.
    """
    trained = model.cfg.vocab_size if trained is None else trained
    model.embed.value = grow_rows(model.embed.value, vocab_size, trained, axis=0)  # (vocab, embed)
    if model.unembed is not None:
        model.unembed.value = grow_rows(model.unembed.value, vocab_size, trained, axis=1)  # (embed, vocab)
    model.cfg.vocab_size = vocab_size
    return model
