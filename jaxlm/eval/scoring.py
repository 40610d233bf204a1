"""Batched log-likelihood of continuations given contexts: the one model call the harness,
perplexity and the lm-evaluation-harness adapter all use.

A request is (context ids, continuation ids). Its sequence is context + continuation; when it is
longer than the context window plus one, the leftmost tokens are dropped (the continuation is
kept whole while it fits). Sequences are right-padded (segment id 0 for padding) into batches of
a fixed row count and a length rounded up to a power of two, so a whole benchmark compiles a
handful of shapes. Requests are sorted by length so rows of one batch waste little padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass
class Score:
    logprob: float  # sum of log p(continuation token | everything before it), natural log
    greedy: bool  # every continuation token is the model's argmax
    tokens: int  # continuation tokens scored
    truncated: bool  # context (or continuation) tokens were dropped to fit the window


_COMPILED: dict = {}


def compiled(kind: str, graphdef: Any, build):
    """One jitted function per (kind, model structure), shared by every Scorer/Generator of that
    model, so the trainer's periodic evaluation compiles once. GraphDefs hold the (unhashable)
    config, so the key is their text, which names every module and setting."""
    key = (kind, repr(graphdef))
    if key not in _COMPILED:
        if len(_COMPILED) >= 32:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]


def _bucket(n: int, cap: int) -> int:
    """n rounded up to a power of two (at least 16), at most cap."""
    return min(cap, max(16, 1 << (n - 1).bit_length()))


class Scorer:
    """Scores requests with a model given as (graphdef, params); `window` = longest input the
    model is evaluated on (its trained context)."""

    def __init__(self, graphdef: Any, params: dict, window: int, batch_size: int = 8):
        self.params = params
        self.window = window
        self.batch_size = batch_size

        def token_logprobs(params, inputs_BT, targets_BT, segment_ids_BT):
            model = nnx.merge(graphdef, params)
            positions = jnp.broadcast_to(jnp.arange(inputs_BT.shape[1]), inputs_BT.shape)
            logits = model(inputs_BT, positions, segment_ids_BT)  # (B, T, V) float32
            logp = jax.nn.log_softmax(logits, axis=-1)
            target_logp = jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]
            return target_logp, jnp.argmax(logits, axis=-1) == targets_BT

        self._token_logprobs = compiled("score", graphdef, lambda: jax.jit(token_logprobs))

    def _fit(self, context: Sequence[int], continuation: Sequence[int]) -> tuple[list[int], int, bool]:
        """(sequence, continuation length kept, truncated): keeps the rightmost window+1 tokens."""
        seq = list(context) + list(continuation)
        keep = self.window + 1
        truncated = len(seq) > keep
        n_cont = min(len(continuation), keep - 1)  # at least one input token must precede the first target
        return seq[-keep:], n_cont, truncated

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Score]:
        """Scores every (context, continuation); the context must hold at least one token."""
        fitted = []
        for i, (ctx, cont) in enumerate(requests):
            if len(ctx) == 0:
                raise ValueError(f"request {i} has an empty context: the first token of a text has nothing "
                                 "to be predicted from (put BOS or a separator token before it)")
            if len(cont) == 0:
                raise ValueError(f"request {i} has an empty continuation")
            fitted.append(self._fit(ctx, cont))
        order = sorted(range(len(fitted)), key=lambda i: -len(fitted[i][0]))
        results: list[Score | None] = [None] * len(fitted)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            length = _bucket(max(len(fitted[i][0]) - 1 for i in rows), self.window)
            inputs = np.zeros((self.batch_size, length), np.int32)
            targets = np.zeros_like(inputs)
            segments = np.zeros_like(inputs)
            for r, i in enumerate(rows):
                seq = fitted[i][0]
                inputs[r, :len(seq) - 1], targets[r, :len(seq) - 1] = seq[:-1], seq[1:]
                segments[r, :len(seq) - 1] = 1
            logp, greedy = jax.device_get(self._token_logprobs(self.params, inputs, targets, segments))
            for r, i in enumerate(rows):
                seq, n_cont, truncated = fitted[i]
                end = len(seq) - 1  # targets [end - n_cont, end) are the continuation
                span = slice(end - n_cont, end)
                results[i] = Score(float(np.sum(logp[r, span], dtype=np.float64)), bool(np.all(greedy[r, span])),
                                   n_cont, truncated or n_cont < len(requests[i][1]))
        return results  # type: ignore[return-value]

    def rolling(self, tokens: Sequence[int], stride: int | None = None) -> tuple[float, int]:
        """(sum of log p, tokens scored) of a whole sequence; see `rolling_windows`."""
        total, count = 0.0, 0
        for s in self.score(rolling_windows(tokens, self.window, stride or self.window)):
            total += s.logprob
            count += s.tokens
        return total, count


def rolling_windows(tokens: Sequence[int], window: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) requests that score tokens[1:] of a long sequence, each once.

    The first window scores tokens 1..window; each later one scores the next `stride` tokens with
    the window - stride + 1 tokens before them as context, so every token after the first window
    is predicted from at least window - stride tokens. The first token is context only (put BOS
    first to score a text's first token).
    """
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, {window}], got {stride}")
    tokens = list(tokens)
    out, done = [], 1  # targets [1, done) are scored
    while done < len(tokens):
        end = min(len(tokens), done + stride if done > 1 else window + 1)
        out.append((tokens[max(0, end - window - 1):done], tokens[done:end]))
        done = end
    return out
