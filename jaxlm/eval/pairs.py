"""Preference pairs in evaluation: a reward model's accuracy on held-out pairs, a language model's
log-probabilities of both responses (the reference log-probabilities DPO reads from the records),
reward-model scores of any conversations (win rates), and pairs made from a model's own samples
that a verifier labels (`verifier_pairs`: DPO on a verifiable task).

Pairs are read exactly as training reads them (jaxlm.data.pairs: rows side by side, cut at the
window + 1 tokens), so a score or log-probability here is the one the trainer would compute.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.data import format as fmt
from jaxlm.data.chat import ChatTemplate
from jaxlm.data.format import DataFormatError
from jaxlm.data.pairs import PAIR_FIELDS, build_pair_loader, real_pair_count, sequence_row, write_reference
from jaxlm.data.shards import open_dataset
from jaxlm.eval.chat import end_of_turn_id, reply
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.loading import EvalModel
from jaxlm.eval.scoring import compiled
from jaxlm.train.pair_objectives import last_token_scores, token_logprobs


def _batches(em: EvalModel, dataset: str, split: str, batch_pairs: int) -> Iterator[tuple[dict, int]]:
    """(batch of 2 * batch_pairs rows, number of real pairs in it) over a pair dataset's split."""
    try:
        loader = build_pair_loader([(dataset, 1.0)], split, seq_len=em.window, batch_rows=2 * batch_pairs,
                                   num_epochs=1, shuffle=False, prefetch=0, model_vocab_size=em.model_cfg.vocab_size)
    except (DataFormatError, ValueError) as e:
        raise EvalError(str(e)) from None
    with loader:
        for batch in loader:
            yield {k: batch[k] for k in PAIR_FIELDS}, real_pair_count(batch)


def sequence_scores(graphdef, params, batch) -> jax.Array:
    """(rows,) a reward model's score of each row's sequence (PAIR_FIELDS rows, one sequence from
    position 0 each): its scalar head on the last real token, as the reward objective trains it."""
    model = nnx.merge(graphdef, params)
    h_BTD = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
    return last_token_scores(model, h_BTD, batch["segment_ids"])


def _scores_fn(em: EvalModel):
    if not em.model_cfg.reward_head:
        raise EvalError("this model has no reward head (model.reward_head); give a run trained with "
                        "train.objective=reward")
    return compiled("reward_scores", em.graphdef, lambda: jax.jit(functools.partial(sequence_scores, em.graphdef)))


def _logprobs_fn(em: EvalModel):
    def logprobs(params, batch):
        model = nnx.merge(em.graphdef, params)
        h_BTD = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])
        return jnp.sum(token_logprobs(model, h_BTD, batch["targets"], batch["loss_mask"]), axis=-1)

    return compiled("pair_logprobs", em.graphdef, lambda: jax.jit(logprobs))


def _per_pair(em: EvalModel, fn, dataset: str, split: str, batch_pairs: int, limit: Optional[int]) -> np.ndarray:
    """(pairs, 2) float32 of fn's per-row values: chosen, rejected."""
    out = []
    for batch, real in _batches(em, dataset, split, batch_pairs):
        values = np.asarray(jax.device_get(fn(em.params, batch)), np.float32).reshape(-1, 2)
        out.append(values[:real])
        if limit is not None and sum(len(o) for o in out) >= limit:
            break
    values = np.concatenate(out) if out else np.zeros((0, 2), np.float32)
    return values[:limit] if limit is not None else values


def reward_accuracy(em: EvalModel, dataset: str, *, split: str = "val", batch_pairs: int = 8,
                    limit: Optional[int] = None) -> dict:
    """How often the reward model scores the chosen response above the rejected one."""
    s = _per_pair(em, _scores_fn(em), dataset, split, batch_pairs, limit)
    if not len(s):
        raise EvalError(f"{dataset}:{split} holds no pairs")
    margin = s[:, 0] - s[:, 1]
    return {"pairs": f"{dataset}:{split}", "count": len(s), "accuracy": float(np.mean(margin > 0)),
            "ties": int(np.sum(margin == 0)), "score_margin": float(np.mean(margin)),
            "score_chosen": float(np.mean(s[:, 0])), "score_rejected": float(np.mean(s[:, 1]))}


def pair_logprobs(em: EvalModel, dataset: str, *, split: str = "val", batch_pairs: int = 8) -> np.ndarray:
    """(pairs, 2): the model's summed log-probability of each pair's chosen and rejected response."""
    return _per_pair(em, _logprobs_fn(em), dataset, split, batch_pairs, None)


def write_reference_logprobs(em: EvalModel, dataset: str, out: str, *, model: str, batch_pairs: int = 8) -> dict:
    """A copy of pair dataset `dataset` in `out` whose records carry `em`'s log-probabilities of
    both responses (preference.reference=cached reads them); `model` names it in the manifest."""
    try:
        info = open_dataset(dataset, em.model_cfg.vocab_size)
    except DataFormatError as e:
        raise EvalError(str(e)) from None
    splits = {split: pair_logprobs(em, dataset, split=split, batch_pairs=batch_pairs)
              for split, counts in info.splits.items() if counts.documents}
    try:
        return write_reference(dataset, out, splits, {"model": model, "seq_len": em.window})
    except (DataFormatError, OSError) as e:
        raise EvalError(f"cannot write {out!r}: {e}") from None


def verifier_pairs(em: EvalModel, template: ChatTemplate, items: Sequence[dict], verifier: Callable[[str, str], float],
                   *, samples: int = 4, temperature: float = 1.0, max_new_tokens: int = 64, seed: int = 0,
                   batch_size: int = 64) -> tuple[list[dict], dict]:
    """(pairs, counts): `samples` answers drawn from `em` for each item {question, answer}, rewarded
    by verifier(response, answer); for every question with both a rewarded (1) and an unrewarded
    (< 1) answer, pairs {prompt, chosen, rejected} (the pairs source's layout), the k-th distinct
    rewarded answer with the k-th distinct unrewarded one. An answer cut by max_new_tokens counts
    as unrewarded whatever its text (it never ended its turn)."""
    conversations = [[{"role": "user", "content": it["question"]}] for it in items for _ in range(samples)]
    outs = reply(em, template, conversations, SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                                             seed=seed), Generator(
        em.graphdef, em.params, em.window, tokenizer=em.tokenizer, eos_id=end_of_turn_id(template, em.tokenizer),
        batch_size=batch_size))
    answers = [[(g.text, g.finish_reason == "end_of_turn") for g in outs[i * samples:(i + 1) * samples]]
               for i in range(len(items))]
    pairs, rewarded = pairs_from_answers(items, answers, verifier)
    return pairs, {"questions": len(items), "samples": len(outs), "rewarded": rewarded / max(1, len(outs)),
                   "pairs": len(pairs)}


def pairs_from_answers(items: Sequence[dict], answers: Sequence[Sequence[tuple[str, bool]]],
                       verifier: Callable[[str, str], float]) -> tuple[list[dict], int]:
    """(pairs, rewarded answers): per item, its answers [(text, ended its turn)] split into
    rewarded (ended, verifier gives 1) and the rest, each side without repeats, paired in order."""
    pairs, rewarded = [], 0
    for it, mine in zip(items, answers):
        good, bad = [], []
        for text, ended in mine:
            ok = ended and verifier(text, it["answer"]) >= 1.0
            rewarded += ok
            side = good if ok else bad
            if text not in side:
                side.append(text)
        pairs += [{"prompt": it["question"], "chosen": c, "rejected": r} for c, r in zip(good, bad)]
    return pairs, rewarded


def conversation(prompt: Sequence[int], response: Sequence[int]) -> np.ndarray:
    """The MASKED_TOKEN sequence a reward model scores: prompt ids, then the response's (masked)."""
    seq = np.empty(len(prompt) + len(response), fmt.MASKED_TOKEN)
    seq["token"], seq["mask"] = list(prompt) + list(response), [0] * len(prompt) + [1] * len(response)
    return seq


def scoring_rows(sequences: Sequence[Optional[np.ndarray]], window: int, rows: int) -> dict[str, np.ndarray]:
    """{field: (rows, window)} of up to `rows` sequences, one a row, then empty rows."""
    out = [sequence_row(seq, window) for seq in sequences] + [sequence_row(None, window)] * (rows - len(sequences))
    return {k: np.stack([r[k] for r in out]) for k in PAIR_FIELDS}


def score_conversations(em: EvalModel, sequences: Sequence[np.ndarray], batch_pairs: int = 8) -> np.ndarray:
    """Reward-model scores of token sequences (each a MASKED_TOKEN array, e.g. prompt + response)."""
    fn = _scores_fn(em)
    out = []
    width = 2 * batch_pairs
    for start in range(0, len(sequences), width):
        chunk = sequences[start:start + width]
        batch = scoring_rows(chunk, em.window, width)
        out.append(np.asarray(jax.device_get(fn(em.params, batch)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)
