"""Instruction-tuned models: held-out loss on response tokens, and chain-of-thought exact match.

Instruction loss reads an instruction dataset's masked records (record kind "tokens_mask", written
by data_prep's instruction sources) and scores only the tokens the mask marks, the assistant's
turns and their end-of-turn tokens, each given everything before it in its conversation:
exactly the tokens the SFT loss trains. `loss` is the mean NLL per response token over the split
(what the training loss averages); `loss_per_example` the mean of each example's own mean (every
example counts once, however long its answer). An example longer than the window keeps its first
window + 1 tokens (the loader's rule: the tail is cut), and is counted.

Chain-of-thought exact match asks each question as a user turn through the model's chat
template, generates greedily to the end of the turn, and compares the final answer after the
marker ("#### 42") with the gold one (jaxlm.eval.answers).
"""

from __future__ import annotations

import json
import math
from typing import Optional

import numpy as np

from jaxlm.data.chat import ANSWER_MARKER, ChatTemplate, alpaca_prompt
from jaxlm.data.format import DataFormatError
from jaxlm.data.shards import DocumentSource, open_dataset
from jaxlm.eval.answers import exact_match
from jaxlm.eval.chat import reply
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import SamplingConfig
from jaxlm.eval.loading import EvalModel
from jaxlm.eval.scoring import Scorer


def trained_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s in `mask`, from position 1 on (token 0 has no context)."""
    m = np.concatenate([[0], np.asarray(mask[1:], np.int8), [0]])
    edges = np.flatnonzero(np.diff(m))
    return [(int(s) + 1, int(e) + 1) for s, e in zip(edges[::2], edges[1::2])]


def instruction_loss(em: EvalModel, dataset_dir: str, *, split: str = "val", max_documents: Optional[int] = None,
                     batch_size: int = 8) -> dict:
    """Mean NLL of the response tokens of a masked dataset's split (see the module docstring)."""
    try:
        info = open_dataset(dataset_dir, em.model_cfg.vocab_size)
        docs = DocumentSource(info, split)
    except DataFormatError as e:
        raise EvalError(str(e)) from None
    if info.record_kind != "tokens_mask":
        raise EvalError(f"{dataset_dir} is a pre-training dataset (records without a loss mask); instruction "
                        "loss needs one data_prep made from instruction sources (record_kind tokens_mask)")
    count = len(docs) if max_documents is None else min(max_documents, len(docs))
    requests, owner, cut = [], [], 0
    for i in range(count):
        doc = docs[i]
        ids, mask = [int(t) for t in doc["token"]], doc["mask"]
        if len(ids) > em.window + 1:
            ids, mask, cut = ids[:em.window + 1], mask[:em.window + 1], cut + 1
        for s, e in trained_runs(mask):
            requests.append((ids[:s], ids[s:e]))
            owner.append(i)
    if not requests:
        raise EvalError(f"{dataset_dir}:{split} has no response tokens to score ({count} examples)")
    nll, tokens = np.zeros(count), np.zeros(count, np.int64)
    for i, s in zip(owner, Scorer(em.graphdef, em.params, em.window, batch_size).score(requests)):
        nll[i] -= s.logprob
        tokens[i] += s.tokens
    scored = tokens > 0
    loss = float(nll.sum() / tokens.sum())
    return dict(source=f"{dataset_dir}:{split}", examples=count, examples_scored=int(scored.sum()),
                examples_truncated=cut, response_tokens=int(tokens.sum()), loss=loss, perplexity=math.exp(loss),
                loss_per_example=float(np.mean(nll[scored] / tokens[scored])), window=em.window,
                per_example=[dict(nll=float(n), tokens=int(t)) for n, t in zip(nll, tokens)])


def read_cot_items(path: str) -> list[dict]:
    """GSM8K-style items {question, answer} from a JSON list or JSONL file; the answer holds the
    marker ("... #### 72") or is the bare final answer. Alpaca-layout items {instruction, input,
    answer} (the shipped arithmetic task) are read too, the question being the user turn."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EvalError(f"cannot read {path} as JSON or JSONL items {{question, answer}} ({e})") from None
    for n, item in enumerate(items):
        if isinstance(item, dict) and "question" not in item and isinstance(item.get("instruction"), str):
            # the Alpaca layout (data_prep.arithmetic's files): the user turn is built as data_prep builds it
            item = items[n] = {**item, "question": alpaca_prompt(item["instruction"], item.get("input") or "")}
        if not (isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str)):
            raise EvalError(f"{path}: item {n} must be {{question: str, answer: str}} (or Alpaca's "
                            f"{{instruction, input, answer}}), got {str(item)[:100]}")
    if not items:
        raise EvalError(f"{path} holds no items")
    return items


def chain_of_thought(em: EvalModel, template: ChatTemplate, items: list[dict], *, max_new_tokens: int = 256,
                     marker: str = ANSWER_MARKER, log_samples: bool = False) -> dict:
    """Exact match of the final answers the model writes, greedy, to each question as a user turn."""
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    outs = reply(em, template, [[{"role": "user", "content": it["question"]}] for it in items], cfg)
    result = exact_match([g.text for g in outs], [it["answer"] for it in items], marker)
    result["ended_at_end_of_turn"] = sum(g.finish_reason == "end_of_turn" for g in outs) / len(outs)
    if log_samples:
        result["samples"] = [dict(question=it["question"], gold=it["answer"], response=g.text, finish=g.finish_reason)
                             for it, g in zip(items, outs)]
    return result
