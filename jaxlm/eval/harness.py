"""The n-shot benchmark harness: prompts from task specs, batched log-likelihood scoring or
generation, metrics beside their random-chance baseline, optionally split by contamination.

Scoring:
  multiple_choice  acc: the choice with the highest log-likelihood; acc_norm: highest
                   log-likelihood per character of the choice (as lm-evaluation-harness does)
  schema           acc: the context after which the shared continuation is most likely
  cloze            acc: every continuation token is the greedy choice; perplexity = exp(-mean ll)
  generate         exact_match: the answer extracted by the task's regex equals the gold one;
                   exact_match_flexible (numeric tasks): the last number generated does
A continuation is tokenized as part of the whole text: encode(context + continuation) split where
encode(context) ends (trailing spaces of the context move to the continuation first).

Demonstrations (n-shot): drawn per item by a seeded RNG (seed, task, item index) from the task's
`fewshot_path` split, or, when the set has no separate split, from the same file without the item.
Each demonstration is the prompt followed by its gold answer; they are joined by the task's
`fewshot_separator` before the item's prompt. Prompts longer than the model's context keep their
rightmost tokens (demonstrations are lost first); `truncated` counts such items.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Optional, Sequence

import numpy as np

from jaxlm.eval import tasks as T
from jaxlm.eval.contamination import NgramIndex
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.loading import EvalModel, from_params
from jaxlm.eval.scoring import Scorer
from jaxlm.eval.tokenizer import Tokenizer

PRIMARY = {"multiple_choice": "acc", "schema": "acc", "cloze": "acc", "generate": "exact_match"}


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) whose concatenation is the encoding of the whole text."""
    if not continuation:
        raise ValueError(f"the continuation after {context[-40:]!r} is empty; there is nothing to score")
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    n = len(tok.prefix() + tok.encode(context))
    whole = tok.prefix() + tok.encode(context + continuation)
    n = min(n, len(whole) - 1)  # at least one continuation token
    return whole[:n], whole[n:]


# ----------------------------------------------------------------------------------------------
# Prompts


def _demo_text(task: T.Task, d: dict) -> str:
    if task.kind == "multiple_choice":
        return T.render(task.prompt, d, task.source) + T.render(task.target, d, task.source, choice=d["choices"][d["gold"]])
    if task.kind == "schema":
        return T.render(task.prompt, d, task.source, option=d["contexts"][d["gold"]]) + T.render(task.target, d, task.source)
    return T.render(task.prompt, d, task.source) + T.render(task.target, d, task.source)


def _demos(task: T.Task, pool: list[dict], same_file: bool, index: int, shots: int, seed: int) -> str:
    if shots == 0:
        return ""
    candidates = len(pool) - (1 if same_file else 0)
    if candidates < shots:
        raise EvalError(f"task {task.name}: {shots}-shot needs {shots} demonstrations but only {candidates} "
                        "other items exist")
    rng = random.Random(f"{seed}/{task.name}/{index}")
    picked = [j for j in rng.sample(range(len(pool)), min(len(pool), shots + 1)) if not (same_file and j == index)]
    return "".join(_demo_text(task, pool[j]) + task.fewshot_separator for j in picked[:shots])


def _gold_text(task: T.Task, item: dict) -> str:
    """The item's prompt with its gold answer and no demonstrations: what contamination looks at."""
    return _demo_text(task, item)


# ----------------------------------------------------------------------------------------------
# Metrics


def _stderr(values: Sequence[float]) -> float:
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def _metrics(per_item: list[dict], names: Sequence[str]) -> dict:
    out = {}
    for name in names:
        values = [float(r[name]) for r in per_item]
        out[name] = float(np.mean(values)) if values else float("nan")
        out[f"{name}_stderr"] = _stderr(values)
    return out


def _score_requests(scorer: Scorer, tok: Tokenizer, texts: list[tuple[str, str]]):
    return scorer.score([encode_pair(tok, c, x) for c, x in texts])


def _evaluate_likelihood(task: T.Task, items: list[dict], prefixes: list[str], scorer: Scorer,
                         tok: Tokenizer) -> list[dict]:
    requests, owners = [], []  # owners[k] = (item index, option index)
    for i, (item, prefix) in enumerate(zip(items, prefixes)):
        if task.kind == "multiple_choice":
            ctx = prefix + T.render(task.prompt, item, task.source)
            for j, choice in enumerate(item["choices"]):
                requests.append((ctx, T.render(task.target, item, task.source, choice=choice)))
                owners.append((i, j))
        elif task.kind == "schema":
            cont = T.render(task.target, item, task.source)
            for j, option in enumerate(item["contexts"]):
                requests.append((prefix + T.render(task.prompt, item, task.source, option=option), cont))
                owners.append((i, j))
        else:  # cloze
            requests.append((prefix + T.render(task.prompt, item, task.source), T.render(task.target, item, task.source)))
            owners.append((i, 0))
    try:
        scores = _score_requests(scorer, tok, requests)
    except ValueError as e:
        raise EvalError(f"task {task.name}: {e}") from None
    grouped: list[list] = [[] for _ in items]
    for (i, _), (req, s) in zip(owners, zip(requests, scores)):
        grouped[i].append((req, s))
    records = []
    for item, options in zip(items, grouped):
        ll = [s.logprob for _, s in options]
        rec = dict(id=item["id"], truncated=any(s.truncated for _, s in options))
        if task.kind == "cloze":
            rec.update(acc=float(options[0][1].greedy), loglikelihood=ll[0])
        else:
            pred = int(np.argmax(ll))
            rec.update(gold=item["gold"], pred=pred, acc=float(pred == item["gold"]), loglikelihoods=ll)
            if task.kind == "multiple_choice":
                norm = [s.logprob / max(1, len(req[1])) for req, s in options]  # per character
                rec.update(pred_norm=int(np.argmax(norm)), acc_norm=float(int(np.argmax(norm)) == item["gold"]))
        records.append(rec)
    return records


def _evaluate_generation(task: T.Task, items: list[dict], prefixes: list[str], em: EvalModel,
                         batch_size: int) -> tuple[list[dict], int]:
    max_new = min(task.max_new_tokens, em.window // 2)
    gen = Generator(em.graphdef, em.params, em.window, tokenizer=em.tokenizer, batch_size=batch_size)
    prompts = [p + T.render(task.prompt, it, task.source) for it, p in zip(items, prefixes)]
    outs = gen.generate(prompts, SamplingConfig(max_new_tokens=max_new, stop=tuple(task.stop)))
    records = []
    for item, out in zip(items, outs):
        answer = T.extract_answer(out.text, task.extract, task.numeric)
        targets = item["targets"] if task.numeric else [T.normalize_text(t) for t in item["targets"]]
        rec = dict(id=item["id"], generation=out.text, extracted=answer, targets=item["targets"],
                   exact_match=float(answer is not None and answer in targets),
                   truncated=out.prompt_tokens_dropped > 0)
        if task.numeric:
            flexible = T.last_number(out.text)
            rec.update(flexible=flexible, exact_match_flexible=float(flexible is not None and flexible in targets))
        records.append(rec)
    return records, max_new


def random_baseline(task: T.Task, items: list[dict]) -> float:
    if task.kind == "multiple_choice":
        return float(np.mean([1.0 / len(it["choices"]) for it in items]))
    if task.kind == "schema":
        return float(np.mean([1.0 / len(it["contexts"]) for it in items]))
    return 0.0


def evaluate_task(em: EvalModel, task: T.Task, *, shots: int = 0, limit: Optional[int] = None, seed: int = 1234,
                  data_root: Optional[str] = None, data_file: Optional[str] = None, batch_size: int = 8,
                  contamination: Optional[NgramIndex] = None, log_samples: bool = False) -> dict:
    if em.tokenizer is None:
        raise EvalError("the harness needs the model's tokenizer")
    if shots < 0:
        raise EvalError(f"shots must be >= 0, got {shots}")
    start = time.perf_counter()
    items, path = T.task_items(task, data_root, data_file)
    fewshot_items, fewshot_file = T.task_items(task, data_root, data_file, fewshot=True) if shots else (None, "")
    pool = fewshot_items if fewshot_items is not None else items
    same_file = fewshot_items is None
    chosen = items[:limit] if limit else items
    prefixes = [_demos(task, pool, same_file, i, shots, seed) for i in range(len(chosen))]

    extra: dict[str, Any] = {}
    if task.kind == "generate":
        records, extra["max_new_tokens"] = _evaluate_generation(task, chosen, prefixes, em, batch_size)
        names = ["exact_match"] + (["exact_match_flexible"] if task.numeric else [])
    else:
        scorer = Scorer(em.graphdef, em.params, em.window, batch_size)
        records = _evaluate_likelihood(task, chosen, prefixes, scorer, em.tokenizer)
        names = ["acc", "acc_norm"] if task.kind == "multiple_choice" else ["acc"]
        if task.kind == "cloze":
            extra["perplexity"] = float(math.exp(-np.mean([r["loglikelihood"] for r in records])))

    result = dict(task=task.name, kind=task.kind, file=path, items=len(chosen), shots=shots,
                  fewshot_source=fewshot_file or "same file, the item itself excluded",
                  random_baseline=random_baseline(task, chosen), primary=PRIMARY[task.kind],
                  metrics=_metrics(records, names), truncated=sum(r["truncated"] for r in records), **extra)
    if contamination is not None:
        flags = contamination.contaminated([_gold_text(task, it) for it in chosen])
        for rec, flag in zip(records, flags):
            rec["contaminated"] = flag
        clean = [r for r, f in zip(records, flags) if not f]
        result.update(contaminated=int(sum(flags)), clean_items=len(clean), metrics_clean=_metrics(clean, names))
    result["seconds"] = round(time.perf_counter() - start, 2)
    if log_samples:
        result["samples"] = records
    return result


def evaluate_tasks(em: EvalModel, task_names: Sequence[str], *, task_files: Optional[dict] = None, **kw) -> dict:
    """Runs each task (a built-in name or a spec .yaml); returns {"tasks": {...}, "average": {...}}."""
    specs = [T.load_task(name) for name in task_names]  # all names checked before any compute
    task_files = task_files or {}
    results = {}
    for task in specs:
        results[task.name] = evaluate_task(em, task, data_file=task_files.get(task.name), **kw)
    return dict(tasks=results, average=_average(results))


def _average(results: dict) -> dict:
    if not results:
        return {}
    scores = [r["metrics"][r["primary"]] for r in results.values()]
    baselines = [r["random_baseline"] for r in results.values()]
    above = [(s - b) / (1 - b) for s, b in zip(scores, baselines)]
    return dict(score=float(np.mean(scores)), random_baseline=float(np.mean(baselines)),
                above_chance=float(np.mean(above)))


def run_tasks(model_params: dict, config, tasks: Sequence[str], *, tokenizer: Optional[Tokenizer] = None,
              window: Optional[int] = None, **kw) -> dict:
    """The in-training hook: evaluate parameters in memory on a task list.

    `config` is the run's Config (the tokenizer comes from data.sources[0] unless given). Keyword
    arguments are those of `evaluate_task` (shots, limit, seed, data_root, batch_size,
    contamination, log_samples) and `task_files`. Log `scalars(result)` to TensorBoard.
    """

    return evaluate_tasks(from_params(config, model_params, tokenizer, window), tasks, **kw)


def scalars(result: dict, prefix: str = "eval") -> dict[str, float]:
    """Flat {"eval/<task>/<metric>": value} of a result, for TensorBoard and metrics.jsonl."""
    out = {}
    for name, r in result["tasks"].items():
        for metric, value in r["metrics"].items():
            if not metric.endswith("_stderr"):
                out[f"{prefix}/{name}/{metric}"] = value
        for metric, value in r.get("metrics_clean", {}).items():
            if not metric.endswith("_stderr"):
                out[f"{prefix}/{name}/{metric}_clean"] = value
    for key, value in result.get("average", {}).items():
        out[f"{prefix}/average/{key}"] = value
    return out


def format_table(result: dict) -> str:
    """A plain-text table: one row per task and metric, random baseline beside each score."""
    header = ["task", "kind", "n", "shots", "metric", "value", "stderr", "random"]
    with_clean = any("metrics_clean" in r for r in result["tasks"].values())
    if with_clean:
        header += ["clean", "contaminated"]
    rows = []
    for name, r in result["tasks"].items():
        for metric, value in r["metrics"].items():
            if metric.endswith("_stderr"):
                continue
            row = [name, r["kind"], str(r["items"]), str(r["shots"]), metric, f"{value:.4f}",
                   f"{r['metrics'][metric + '_stderr']:.4f}", f"{r['random_baseline']:.4f}"]
            if with_clean:
                clean = r.get("metrics_clean", {}).get(metric)
                row += ["-" if clean is None or math.isnan(clean) else f"{clean:.4f}", str(r.get("contaminated", "-"))]
            rows.append(row)
        if "perplexity" in r:
            rows.append([name, r["kind"], str(r["items"]), str(r["shots"]), "perplexity", f"{r['perplexity']:.2f}",
                         "", ""] + (["", ""] if with_clean else []))
    avg = result.get("average")
    if avg:
        rows.append(["average", "", "", "", "primary", f"{avg['score']:.4f}", "", f"{avg['random_baseline']:.4f}"]
                    + (["", ""] if with_clean else []))
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
