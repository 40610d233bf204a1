"""Text generation: a prefill of the prompts, then single-token steps against a KV cache, all in one
compiled function (`jax.lax.while_loop`), for a batch of prompts of different lengths.

Batching: prompts are LEFT-padded to a common length P. Padding has segment id 0 and real tokens
segment id 1, so a real token never attends to padding (the cache's empty slots are segment 0 too);
positions count from each prompt's first real token, so a row's numbers do not depend on how much
padding it got. Step i writes the new token at cache slot P + i for every row alike.

Context policy: prompt + max_new_tokens must fit the model's window (its trained context); a longer
prompt keeps its RIGHTMOST window - max_new_tokens tokens, and the output says how many it lost.

Stopping: a row stops at EOS, at a stop sequence, or after max_new_tokens. Stop strings are matched
on the decoded text (the source of truth; text is cut before the stop string); their token
encodings are also matched inside the loop, so generation usually ends early instead of running to
max_new_tokens. `use_cache=False` recomputes the whole sequence at every step (the benchmark's
baseline and the test oracle); it gives the same tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.eval.errors import EvalError
from jaxlm.eval.scoring import compiled
from jaxlm.eval.steering import Steering
from jaxlm.eval.steering import tables as steering_tables


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: off; else sample among the k most likely tokens
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches top_p
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before the first one
    seed: int = 0

    def check(self) -> None:
        if self.max_new_tokens <= 0:
            raise EvalError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise EvalError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise EvalError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise EvalError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass
class Generation:
    tokens: list[int]  # generated ids without the final EOS (a matched stop sequence stays in them)
    text: Optional[str]  # decoded and cut at the first stop string (with a tokenizer)
    finish_reason: str  # "eos" | "stop" | "length"
    prompt_tokens_dropped: int  # prompt tokens cut off on the left to fit the window


def sample_logits(logits_BV: jax.Array, key: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """Next tokens (B,): argmax when temperature == 0, else a draw from the temperature-scaled
    distribution restricted to the top-k tokens (top_k > 0) and then to the top-p nucleus."""
    greedy = jnp.argmax(logits_BV, axis=-1)
    scaled = logits_BV / jnp.maximum(temperature, 1e-6)
    vocab = logits_BV.shape[-1]
    sorted_BV = -jnp.sort(-scaled, axis=-1)  # descending
    rank = jnp.arange(vocab)
    sorted_BV = jnp.where((top_k > 0) & (rank >= top_k), -jnp.inf, sorted_BV)
    probs = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum((mass_before < top_p) & (sorted_BV > -jnp.inf), axis=-1)  # >= 1: the top token
    cutoff_B = jnp.take_along_axis(sorted_BV, (kept - 1)[:, None], axis=-1)
    masked = jnp.where(scaled >= cutoff_B, scaled, -jnp.inf)
    drawn = jax.random.categorical(key, masked, axis=-1)
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


def _stop_matches(recent_BL: jax.Array, stops_KL: jax.Array) -> jax.Array:
    """(B,) whether the last generated tokens end with one of the stop sequences (left-padded with -1)."""
    if stops_KL.shape[0] == 0:
        return jnp.zeros(recent_BL.shape[0], bool)
    eq = (stops_KL[None] == -1) | (recent_BL[:, None, :] == stops_KL[None])
    return jnp.any(jnp.all(eq, axis=-1), axis=-1)


def _decode(graphdef, params, prompt_BP, lengths_B, key, temperature, top_k, top_p, stops_KL, eos_id,
            vocab_limit, ban_next_SV, ban_hit_SV, bias_V, *, max_new: int, use_cache: bool):
    """Generated ids (B, max_new) (-1 after a row stops) and finish codes (B,): 0 length, 1 eos, 2 stop.

    Steering (jaxlm.eval.steering): each row carries a banned-string automaton state; a token whose
    `ban_hit_SV` entry is set from that state is never drawn, and `bias_V` is added to the logits."""
    b, p = prompt_BP.shape
    pad_B = p - lengths_B
    col = jnp.arange(p)[None, :]
    positions_BP = jnp.maximum(col - pad_B[:, None], 0)
    segments_BP = (col >= pad_B[:, None]).astype(jnp.int32)
    model = nnx.merge(graphdef, params)
    w_DV = model.unembedding()

    def logits_of(h_BD):  # ids the tokenizer lacks (a model may pad its vocabulary up) are never drawn
        logits = jnp.einsum("bd,dv->bv", h_BD, w_DV, preferred_element_type=jnp.float32)
        return jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)

    if use_cache:
        cache = model.init_cache(b, p + max_new)
        h, cache = model.hidden(prompt_BP, positions_BP, segments_BP, cache=cache)
        state = cache
    else:  # the whole sequence so far lives in a buffer; every step runs the model over all of it
        s = p + max_new
        state = jnp.concatenate([prompt_BP, jnp.zeros((b, max_new), prompt_BP.dtype)], axis=1)
        positions_BS = jnp.maximum(jnp.arange(s)[None, :] - pad_B[:, None], 0)
        segments_BS = (jnp.arange(s)[None, :] >= pad_B[:, None]).astype(jnp.int32)
        h = model.hidden(prompt_BP, positions_BP, segments_BP)
    first_logits = logits_of(h[:, -1])
    vocab = first_logits.shape[-1]  # the model's, which may pad the tokenizer's up
    pad = vocab - ban_hit_SV.shape[1]
    ban_hit_SV = jnp.pad(ban_hit_SV, ((0, 0), (0, pad)))
    ban_next_SV = jnp.pad(ban_next_SV, ((0, 0), (0, pad)))
    bias_V = jnp.pad(bias_V, (0, pad))

    def steered(logits_BV, ban_B):
        return jnp.where(ban_hit_SV[ban_B], -jnp.inf, logits_BV + bias_V)

    stop_len = max(1, stops_KL.shape[1])
    carry = dict(i=jnp.zeros([], jnp.int32), state=state, logits=first_logits,
                 out=jnp.full((b, max_new), -1, jnp.int32), done=lengths_B == 0,
                 finish=jnp.zeros((b,), jnp.int32), recent=jnp.full((b, stop_len), -2, jnp.int32),
                 ban=jnp.zeros((b,), jnp.int32))

    def cond(c):
        return (c["i"] < max_new) & ~jnp.all(c["done"])

    def body(c):
        i = c["i"]
        tok = sample_logits(steered(c["logits"], c["ban"]), jax.random.fold_in(key, i), temperature, top_k, top_p)
        tok = jnp.where(c["done"], -1, tok)
        recent = jnp.concatenate([c["recent"][:, 1:], tok[:, None]], axis=1)
        is_eos, is_stop = tok == eos_id, _stop_matches(recent, stops_KL)
        finish = jnp.where(c["done"], c["finish"], jnp.where(is_eos, 1, jnp.where(is_stop, 2, 0)))
        done = c["done"] | is_eos | is_stop
        feed = jnp.maximum(tok, 0)
        ban = ban_next_SV[c["ban"], feed].astype(jnp.int32)
        m = nnx.merge(graphdef, params)
        if use_cache:
            h, state = m.hidden(feed[:, None], (lengths_B + i)[:, None], jnp.ones((b, 1), jnp.int32),
                                cache=c["state"])
            logits = logits_of(h[:, 0])
        else:
            state = jax.lax.dynamic_update_slice_in_dim(c["state"], feed[:, None], p + i, axis=1)
            h = m.hidden(state, positions_BS, segments_BS)
            logits = logits_of(jax.lax.dynamic_index_in_dim(h, p + i, axis=1, keepdims=False))
        return dict(i=i + 1, state=state, logits=logits, out=c["out"].at[:, i].set(tok), done=done,
                    finish=finish, recent=recent, ban=ban)

    final = jax.lax.while_loop(cond, body, carry)
    return final["out"], final["finish"]


def _bucket(n: int, cap: int) -> int:
    return min(cap, max(16, 1 << max(0, n - 1).bit_length()))


class Generator:
    """Generates from a model given as (graphdef, params) with a `window`-token context.

    `tokenizer` (jaxlm.eval.tokenizer.Tokenizer) is needed for text prompts and stop strings;
    token-level use (`generate_ids`) needs only `eos_id`.
    """

    def __init__(self, graphdef: Any, params: dict, window: int, *, tokenizer=None,
                 eos_id: Optional[int] = None, batch_size: int = 8, steering: Optional[Steering] = None):
        self.graphdef, self.params, self.window = graphdef, params, window
        self.tokenizer = tokenizer
        self.steering = steering_tables(tokenizer, steering)
        self.eos_id = eos_id if eos_id is not None else (tokenizer.eos_id if tokenizer is not None else None)
        self.batch_size = batch_size

    def _compiled(self, max_new: int, use_cache: bool):
        return compiled(f"decode/{max_new}/{use_cache}", self.graphdef, lambda: jax.jit(
            functools.partial(_decode, self.graphdef, max_new=max_new, use_cache=use_cache)))

    def _stop_ids(self, stop: Sequence[str]) -> np.ndarray:
        seqs = [self.tokenizer.encode(s) for s in stop if s] if stop else []
        seqs = [s for s in seqs if s]
        width = max((len(s) for s in seqs), default=1)
        out = np.full((len(seqs), width), -1, np.int32)
        for k, s in enumerate(seqs):
            out[k, width - len(s):] = s
        return out

    def generate_ids(self, prompts: Sequence[Sequence[int]], cfg: SamplingConfig = SamplingConfig(),
                     *, use_cache: bool = True) -> list[Generation]:
        cfg.check()
        if cfg.stop and self.tokenizer is None:
            raise EvalError("stop strings need a tokenizer")
        room = self.window - cfg.max_new_tokens
        if room < 1:
            raise EvalError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in the model's "
                            f"{self.window}-token context; ask for at most {self.window - 1} new tokens")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise EvalError(f"prompt {i} is empty; give at least one token (this tokenizer adds no BOS)")
        kept = [list(p)[-room:] for p in prompts]
        stops = self._stop_ids(cfg.stop)
        eos = -1 if self.eos_id is None else self.eos_id
        vocab = self.tokenizer.vocab_size if self.tokenizer is not None else np.iinfo(np.int32).max
        fn = self._compiled(cfg.max_new_tokens, use_cache)
        key = jax.random.key(cfg.seed)
        results: list[Generation] = []
        for start in range(0, len(kept), self.batch_size):
            batch = kept[start:start + self.batch_size]
            p = _bucket(max(map(len, batch)), room)
            tokens = np.zeros((self.batch_size, p), np.int32)
            lengths = np.zeros((self.batch_size,), np.int32)  # rows past the batch: length 0, done at once
            for r, ids in enumerate(batch):
                tokens[r, p - len(ids):] = ids
                lengths[r] = len(ids)
            out, finish = jax.device_get(fn(self.params, tokens, lengths, jax.random.fold_in(key, start),
                                            jnp.float32(cfg.temperature), jnp.int32(cfg.top_k),
                                            jnp.float32(cfg.top_p), stops, jnp.int32(eos), jnp.int32(vocab),
                                            *self.steering))
            for r, ids in enumerate(batch):
                row = [int(t) for t in out[r] if t >= 0]
                reason = ("length", "eos", "stop")[int(finish[r])]
                if reason == "eos":
                    row = row[:-1]
                results.append(Generation(row, None, reason, len(prompts[start + r]) - len(ids)))
        return results

    def generate(self, prompts: Sequence[str], cfg: SamplingConfig = SamplingConfig(),
                 *, use_cache: bool = True) -> list[Generation]:
        """Text in, text out; each text is cut before the first stop string it contains."""
        if self.tokenizer is None:
            raise EvalError("text generation needs a tokenizer")
        ids = [self.tokenizer.prefix() + self.tokenizer.encode(p) for p in prompts]
        outs = self.generate_ids(ids, cfg, use_cache=use_cache)
        for g in outs:
            text = self.tokenizer.decode(g.tokens)
            cut = min((j for j in (text.find(s) for s in cfg.stop if s) if j >= 0), default=-1)
            if cut >= 0:
                text, g.finish_reason = text[:cut], "stop"
            g.text = text
        return outs
