"""The alignment tax: what tuning (SFT, DPO, RL) costs a model elsewhere, beside what it gains, in
one table of the tuned model against its base.

  python -m jaxlm.eval --alignment-tax --workdir TUNED --base BASE [--dataset PRETRAIN] [--instruct-dataset SFT]
         [--tasks a,b --shots N] [--chain-of-thought ITEMS] [--reward RM --pairs DIR] [--limit N]

Rows (each measured on both models, side by side, with the change):
  perplexity        on the pre-training validation split (--dataset; `jaxlm.eval --val`'s number)
  response loss     mean NLL of the response tokens of an instruction dataset's validation split
                    (--instruct-dataset; `jaxlm.eval --instruct`'s number): what tuning cost the
                    answers the model was instruction-tuned on
  <task> <metric>   the n-shot harness (--tasks), its primary metric
  exact match       chain-of-thought exact match on ITEMS (the verifier: the final answer after ####)
  win rate          the tuned model's answer against the base's to the same prompt, greedy: a win when
                    the judge rewards it more, half a win on a tie. The judge is the verifier on ITEMS
                    (reward 1 for a right final answer, else 0), or the reward model --reward on the
                    prompts of --pairs' split (the prompt before each pair's chosen response). The
                    base's win rate against itself is 0.5 by definition.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from jaxlm.data.shards import DocumentSource, open_dataset
from jaxlm.eval import harness, perplexity
from jaxlm.eval.answers import exact_match
from jaxlm.eval.chat import end_of_turn_id, workdir_template
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.instruct import chain_of_thought, instruction_loss
from jaxlm.eval.loading import EvalModel
from jaxlm.eval.pairs import conversation, score_conversations


def win_rate(tuned_rewards, base_rewards) -> float:
    t, b = np.asarray(tuned_rewards, np.float64), np.asarray(base_rewards, np.float64)
    return float(np.mean((t > b) + 0.5 * (t == b)))


def pair_prompts(dataset: str, split: str, limit: Optional[int]) -> list[list[int]]:
    """The prompt of each pair (the chosen sequence's tokens before its response), in record order."""
    info = open_dataset(dataset)
    if info.record_kind != "pair":
        raise EvalError(f"--pairs {dataset} holds {info.record_kind!r} records, not preference pairs")
    docs = DocumentSource(info, split)
    count = len(docs) if limit is None else min(limit, len(docs))
    prompts = []
    for i in range(count):
        chosen = docs[i].chosen
        prompts.append([int(t) for t in chosen["token"][:int(np.argmax(chosen["mask"]))]])
    return prompts


def reward_model_win_rate(tuned: EvalModel, base: EvalModel, reward: EvalModel, prompts: Sequence[list[int]],
                          *, max_new_tokens: int, batch_size: int = 8) -> dict:
    """Greedy answers of both models to each prompt (token ids), judged by the reward model."""
    for em, name in ((tuned, "the tuned model"), (base, "the base")):
        if em.tokenizer is None or reward.tokenizer is None or em.tokenizer.vocab_size != reward.tokenizer.vocab_size:
            raise EvalError(f"{name} and the reward model must share one tokenizer to compare answers")
    eot = end_of_turn_id(workdir_template(tuned), tuned.tokenizer)
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    scores, lengths = {}, {}
    for name, em in (("tuned", tuned), ("base", base)):
        outs = Generator(em.graphdef, em.params, em.window, tokenizer=em.tokenizer, eos_id=eot,
                         batch_size=batch_size).generate_ids(prompts, cfg)
        seqs = [conversation(prompt, g.tokens + ([eot] if g.finish_reason == "eos" else []))
                for prompt, g in zip(prompts, outs)]
        scores[name] = score_conversations(reward, seqs, batch_size)
        lengths[name] = float(np.mean([len(g.tokens) for g in outs]))
    return {"win_rate": win_rate(scores["tuned"], scores["base"]), "n": len(prompts),
            "reward_tuned": float(np.mean(scores["tuned"])), "reward_base": float(np.mean(scores["base"])),
            "length_tuned": lengths["tuned"], "length_base": lengths["base"]}


def alignment_tax(tuned: EvalModel, base: EvalModel, *, dataset: Optional[str] = None, tasks: Sequence[str] = (),
                  shots: int = 0, limit: Optional[int] = None, data_root: Optional[str] = None,
                  task_files: Optional[dict] = None, items: Optional[list[dict]] = None, max_new_tokens: int = 64,
                  reward: Optional[EvalModel] = None, pairs: Optional[str] = None, split: str = "val",
                  batch_size: int = 8, max_documents: Optional[int] = None,
                  instruct_dataset: Optional[str] = None) -> dict:
    """{"rows": [{metric, base, tuned, change, better}], ...}: every measurement asked for, on both models."""
    if not (dataset or instruct_dataset or tasks or items or (reward and pairs)):
        raise EvalError("the alignment tax needs something to measure: --dataset (perplexity), --instruct-dataset, "
                        "--tasks, --chain-of-thought ITEMS, or --reward RM with --pairs DIR")
    rows = []

    def row(metric: str, b: float, t: float, better: str) -> None:
        rows.append({"metric": metric, "base": b, "tuned": t, "change": t - b, "better": better})

    if dataset:
        b, t = (perplexity.dataset_perplexity(em, dataset, max_documents=max_documents, batch_size=batch_size)
                for em in (base, tuned))
        row(f"perplexity ({dataset} val)", b["perplexity"], t["perplexity"], "lower")
    if instruct_dataset:
        b, t = (instruction_loss(em, instruct_dataset, max_documents=max_documents, batch_size=batch_size)
                for em in (base, tuned))
        row(f"response loss ({instruct_dataset} val)", b["loss"], t["loss"], "lower")
    if tasks:
        kw = dict(task_files=task_files, shots=shots, limit=limit, data_root=data_root, batch_size=batch_size)
        b, t = (harness.evaluate_tasks(em, list(tasks), **kw) for em in (base, tuned))
        for name, rb in b["tasks"].items():
            metric = rb["primary"]
            row(f"{name} {metric} ({rb['shots']}-shot)", rb["metrics"][metric], t["tasks"][name]["metrics"][metric], "higher")
    if items:
        items = items[:limit] if limit else items
        results = {name: chain_of_thought(em, workdir_template(em), items, max_new_tokens=max_new_tokens, log_samples=True)
                   for name, em in (("base", base), ("tuned", tuned))}
        row("exact match", results["base"]["exact_match"], results["tuned"]["exact_match"], "higher")
        rewards = {name: [exact_match([s["response"]], [s["gold"]])["exact_match"] for s in r["samples"]]
                   for name, r in results.items()}
        row("win rate vs base (verifier)", 0.5, win_rate(rewards["tuned"], rewards["base"]), "higher")
    if reward is not None and pairs:
        prompts = pair_prompts(pairs, split, limit)
        judged = reward_model_win_rate(tuned, base, reward, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        row("mean reward (reward model)", judged["reward_base"], judged["reward_tuned"], "higher")
        row("win rate vs base (reward model)", 0.5, judged["win_rate"], "higher")
    return {"rows": rows}


def format_table(result: dict) -> str:
    header = ["metric", "base", "tuned", "change", "better"]
    cells = [[r["metric"], _num(r["base"]), _num(r["tuned"]), f"{r['change']:+.4f}", r["better"]] for r in result["rows"]]
    widths = [max(len(h), *(len(c[k]) for c in cells)) for k, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def _num(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"
