"""Counterfactual data augmentation (CDA) and fine-tuning on a debiasing set, measured on gender bias
(docs/safety.md).

  python benchmarks/cda_experiment.py [--data-root ../shared/data] [--out runs/cda_experiment]
                                      [--seeds 0,1] [--steps 400] [--ft-steps 100]

1. CDA: the tiny llama of configs/wikitext2.yaml trained on WikiText-2 paragraphs
   (data_prep/configs/wikitext2.yaml) and, with the same tokenizer, model, steps, batch and seed, on
   the same paragraphs after the `counterfactual` stage (wikitext2_cda.yaml: each gendered paragraph
   kept and its gender-swapped copy added, WinoBias' swap list).
2. Fine-tuning: each plain model trained --ft-steps further (configs/wikitext2_debias.yaml) on the
   gendered paragraphs beside their swapped copies (wikitext2_debias.yaml), against the same
   fine-tuning on the plain corpus: the control for the extra steps.

Every model is scored on CrowS-Pairs' 262 gender pairs (share of pairs whose more stereotypical
sentence is more likely; 0.5 = no preference), WinoBias' 1,584 sentence pairs (dev and test, both
types; share whose pro-stereotypical pronoun is more likely, 0.5 = none, and the mean log-likelihood
gap pro - anti in nats, 0 = none; the same pairs read by gender, male against female: the model's
gender prior, which the augmentation balances in the data), and the loss on the plain corpus'
held-out paragraphs (nats per token). Columns average the seeds; a difference comes with its 95%
paired bootstrap interval over the items (each item's score averaged over the seeds first) and its
value for each seed. Prints the tables and writes them with every number to OUT/results.json;
finished datasets, runs and their scores in OUT are reused (a rerun with more seeds trains only
the new ones).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import yaml

from data_prep.config import config_from_dict as data_config
from data_prep.pipeline import prepare
from jaxlm.eval import bias
from jaxlm.eval.loading import load_workdir
from jaxlm.eval.perplexity import dataset_perplexity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
NEEDS = ("text/wikitext-2/wiki.valid.tokens", "text/wikitext-2/wiki.test.tokens",
         "bias/winobias/generalized_swaps.txt", "bias/crows_pairs/crows_pairs_anonymized.csv",
         "bias/winobias/pro_stereotyped_type1.txt.test")
METRICS = (("crows_gender", "CrowS-Pairs gender: share stereotypical", "0.5"),
           ("winobias_pro", "WinoBias: share pro-stereotypical", "0.5"),
           ("winobias_gap", "WinoBias: log-lik gap pro - anti (nats)", "0"),
           ("winobias_male", "WinoBias: share preferring the male pronoun", "0.5"),
           ("winobias_male_gap", "WinoBias: log-lik gap male - female (nats)", "0"),
           ("val_loss", "loss on plain held-out text (nats/token)", ""))


def rooted(value, data_root: str):
    """The config with every '../shared/data' path moved under data_root."""
    if isinstance(value, dict):
        return {k: rooted(v, data_root) for k, v in value.items()}
    if isinstance(value, list):
        return [rooted(v, data_root) for v in value]
    if isinstance(value, str) and value.startswith("../shared/data/"):
        return os.path.join(data_root, value[len("../shared/data/"):])
    return value


def prepare_data(name: str, data_root: str, out: str, tokenizer: str = "") -> str:
    with open(os.path.join(REPO, "data_prep", "configs", f"{name}.yaml"), encoding="utf-8") as f:
        raw = rooted(yaml.safe_load(f), data_root)
    raw["output"] = os.path.join(out, "data", name)
    if tokenizer:
        raw["tokenizer"] = {"path": tokenizer}
    prepare(data_config(raw), log=lambda message: None)
    return raw["output"]


def train(config: str, workdir: str, data: str, seed: int, steps: int, extra: tuple = ()) -> dict:
    """One `python -m jaxlm.main` run (skipped when the workdir already finished it)."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    if not _finished(metrics, steps):
        command = [sys.executable, "-m", "jaxlm.main", "--config", os.path.join(REPO, "configs", config),
                   f"workdir={workdir}", f"data.sources=[{{path: {data}}}]", f"seed={seed}", f"train.steps={steps}",
                   "log.progress=false", *extra]
        load, start = os.getloadavg()[0], time.perf_counter()
        with open(workdir + ".log", "w") as log:
            done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if done.returncode:
            sys.exit(f"error: training {workdir} failed (exit {done.returncode}); see {workdir}.log")
        print(f"  trained {os.path.basename(workdir)}: {steps} steps in {time.perf_counter() - start:.0f} s "
              f"(load {load:.1f})", flush=True)
    rows = [json.loads(line) for line in open(metrics)]
    return {"tokens_seen": max(r.get("tokens_seen", 0) for r in rows),
            "train_loss": [r["loss"] for r in rows if "loss" in r][-1]}


def _finished(metrics: str, steps: int) -> bool:
    if not os.path.isfile(metrics):
        return False
    return any(r.get("step") == steps and "loss" in r for r in map(json.loads, open(metrics)))


def score(workdir: str, crows: list[dict], wino: list[dict], plain_data: str) -> dict:
    """Per-item scores (CrowS-Pairs preference, WinoBias preference and gap) and the held-out loss,
    kept in the workdir so a rerun with more seeds scores only the new models."""
    cache, scores = os.path.join(workdir, "bias_scores.npz"), None
    if os.path.isfile(cache):
        with np.load(cache) as saved:
            scores = {k: saved[k] for k in saved.files}
        if len(scores["crows_gender"]) != len(crows) or len(scores["winobias_pro"]) != len(wino):
            scores = None
    if scores is None:
        scores = _score(workdir, crows, wino, plain_data)
        np.savez(cache, **scores)
    # the same pairs read by gender: gap male - female, over the pairs whose male side is known
    side = [bias.winobias_pro_is_male(w) for w in wino]
    male_gap = np.array([g if m else -g for g, m in zip(scores["winobias_gap"], side) if m is not None])
    return {**scores, "val_loss": float(scores["val_loss"]), "winobias_male": (male_gap > 0).astype(float),
            "winobias_male_gap": male_gap}


def _score(workdir: str, crows: list[dict], wino: list[dict], plain_data: str) -> dict:
    em = load_workdir(workdir)
    texts = ([c["sent_more"] for c in crows] + [c["sent_less"] for c in crows]
             + [w["pro"] for w in wino] + [w["anti"] for w in wino])
    ll = np.array(bias.sentence_logliks(em, texts, batch_size=16))
    n, m = len(crows), len(wino)
    more, less, pro, anti = ll[:n], ll[n:2 * n], ll[2 * n:2 * n + m], ll[2 * n + m:]
    return {"crows_gender": (more > less).astype(float), "winobias_pro": (pro > anti).astype(float),
            "winobias_gap": pro - anti,
            "val_loss": dataset_perplexity(em, plain_data, split="val", batch_size=16)["loss"]}


def compare(runs: dict[str, list[dict]], before: str, after: str) -> dict:
    """Per metric: each model's mean over seeds, the difference after - before with its bootstrap
    interval over items, and the difference of each seed."""
    out = {}
    for key, _, _ in METRICS:
        a = np.array([s[key] for s in runs[before]])  # (seeds, items) or (seeds,)
        b = np.array([s[key] for s in runs[after]])
        row = {before: float(a.mean()), after: float(b.mean()),
               "per_seed": [float(y.mean() - x.mean()) for x, y in zip(a, b)]}
        if a.ndim == 2:
            row["diff"], row["ci_low"], row["ci_high"] = bias.paired_bootstrap(a.mean(0), b.mean(0))
        else:
            row["diff"] = float(b.mean() - a.mean())
        out[key] = row
    return out


def table(rows: dict, columns: list[tuple[str, str]]) -> str:
    head = ["metric", "no bias", *[label for _, label in columns], "difference [95% CI]", "per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, none in METRICS:
        r = rows[key]
        ci = f" [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]" if "ci_low" in r else ""
        seeds = ", ".join(f"{d:+.4f}" for d in r["per_seed"])
        lines.append("| " + " | ".join([label, none, *[f"{r[name]:.4f}" for name, _ in columns],
                                        f"{r['diff']:+.4f}{ci}", seeds]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=SHARED)
    p.add_argument("--out", default=os.path.join(REPO, "runs", "cda_experiment"))
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--steps", type=int, default=400, help="pre-training steps of each model")
    p.add_argument("--ft-steps", type=int, default=100, help="fine-tuning steps (debiasing set and control)")
    args = p.parse_args()
    missing = [f for f in NEEDS if not os.path.isfile(os.path.join(args.data_root, f))]
    if missing:
        sys.exit(f"error: {os.path.join(args.data_root, missing[0])} not found; pass --data-root with WikiText-2, "
                 "CrowS-Pairs and WinoBias laid out as in ../shared/data (its MANIFEST.md)")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    root = os.path.abspath(args.data_root)

    plain = prepare_data("wikitext2", root, out)
    tokenizer = os.path.join(plain, "tokenizer.model")
    data = {"plain": plain, "cda": prepare_data("wikitext2_cda", root, out, tokenizer),
            "debias": prepare_data("wikitext2_debias", root, out, tokenizer)}
    tokens = {k: json.load(open(os.path.join(v, "manifest.json")))["splits"]["train"]["tokens"]
              for k, v in data.items()}
    print(f"train tokens: plain {tokens['plain']:,}, CDA {tokens['cda']:,}, debiasing set {tokens['debias']:,}")

    crows = [c for c in bias.read_crows_pairs(os.path.join(root, "bias/crows_pairs/crows_pairs_anonymized.csv"))
             if c["bias_type"] == "gender"]
    wino = [w for split in ("dev", "test") for w in bias.read_winobias(os.path.join(root, "bias/winobias"), split)]
    runs = {name: [] for name in ("plain", "cda", "ft_plain", "ft_debias")}
    info = {name: [] for name in runs}
    for seed in seeds:
        d = os.path.join(out, "runs")
        start = (f"init.from={d}/plain_s{seed}",)  # both fine-tunings start from this seed's plain model
        jobs = [("plain", "wikitext2.yaml", data["plain"], args.steps, ()),
                ("cda", "wikitext2.yaml", data["cda"], args.steps, ()),
                ("ft_plain", "wikitext2_debias.yaml", data["plain"], args.ft_steps, start),
                ("ft_debias", "wikitext2_debias.yaml", data["debias"], args.ft_steps, start)]
        for name, config, path, steps, extra in jobs:
            workdir = os.path.join(d, f"{name}_s{seed}")
            info[name].append(train(config, workdir, path, seed, steps, extra))
            runs[name].append(score(workdir, crows, wino, data["plain"]))

    cda = compare(runs, "plain", "cda")
    ft = compare(runs, "ft_plain", "ft_debias")
    for key, _, _ in METRICS:  # the model both fine-tunings started from
        ft[key]["plain"] = cda[key]["plain"]
    print(f"\nCDA: trained from scratch, {args.steps} steps of 16 x 128 tokens, seeds {seeds}; "
          f"{len(crows)} CrowS-Pairs gender pairs, {len(wino)} WinoBias pairs")
    print(table(cda, [("plain", "plain"), ("cda", "CDA")]))
    print(f"\nFine-tuning the plain model {args.ft_steps} more steps: on the plain corpus (control) "
          "or on the debiasing set")
    print(table(ft, [("plain", "before"), ("ft_plain", "+ plain"), ("ft_debias", "+ debiasing set")]))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"seeds": seeds, "steps": args.steps, "ft_steps": args.ft_steps, "train_tokens": tokens,
                   "crows_gender_pairs": len(crows), "winobias_pairs": len(wino), "runs": info,
                   "cda": cda, "fine_tuning": ft}, f, indent=1)
    print(f"\nwrote {os.path.join(out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
