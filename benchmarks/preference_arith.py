"""Preference tuning on the shipped arithmetic task, end to end: DPO on (right, wrong) answer pairs
sampled from the SFT model and labelled by the verifier raises held-out exact match; a reward model
learns the verifier's rule from the same pairs.

  python benchmarks/preference_arith.py [--sft runs/arith_sft] [--samples 4] [--train-questions 2000]
                                        [--figure docs/preference_arith.png] [--skip-training]

Needs the SFT base first (configs/arith_sft.yaml: `python -m data_prep.arithmetic --out data/arithmetic`,
`python -m data_prep --config data_prep/configs/arith_sft.yaml`, `python -m jaxlm.main --config
configs/arith_sft.yaml`). Then, in order (each step is skipped when its output exists):
  1. pairs: `--samples` answers (temperature 1, seed 0) from the SFT model to each of the first
     `--train-questions` train problems and to every test problem; the verifier (`--verifier`,
     default jaxlm.eval.verifiers:checked_working: the right final number reached by right steps)
     labels them; a question with both a right and a wrong answer gives pairs ->
     data/arithmetic/pairs_{train,test}.jsonl -> data_prep/configs/arith_pairs.yaml;
  2. DPO: configs/arith_dpo.yaml (frozen SFT reference, a checkpoint every 25 steps, all kept);
  3. the reward model: configs/reward_arith.yaml;
then prints, for the SFT model (step 0) and every DPO checkpoint: held-out exact match (greedy, the
400 test problems), sampled accuracy (4 answers per problem at temperature 1), the KL to the SFT
model (sampled answers, sequence level), DPO's implicit-reward accuracy on the held-out pairs; then
the reward model's held-out pair accuracy, and draws the curve.
Times are the machine's (a shared, loaded 2-core CPU when the docs' numbers were taken).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from jaxlm.config import load_config
from jaxlm.eval.chat import workdir_template
from jaxlm.eval.divergence import sampled_kl
from jaxlm.eval.instruct import chain_of_thought
from jaxlm.eval.loading import from_params, load_workdir
from jaxlm.eval.pairs import reward_accuracy, verifier_pairs
from jaxlm.eval.verifiers import final_number, load_verifier
from jaxlm.train.checkpoint_reader import read_params

MAX_NEW = 48  # the task's worked answers are at most ~35 tokens


def items(path: str, limit=None) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{"question": r["instruction"], "answer": r["answer"]} for r in rows[:limit]]


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def make_pairs(sft, template, data: str, samples: int, train_questions: int, verifier: str) -> bool:
    """Writes pairs_{train,test}.jsonl (unless made already with these settings); False when files
    made with other settings are in the way."""
    settings = {"sft": os.path.abspath(sft.config.workdir), "samples": samples, "train_questions": train_questions,
                "verifier": verifier, "temperature": 1.0, "max_new_tokens": MAX_NEW}
    info = os.path.join(data, "pairs_settings.json")
    if os.path.isfile(info):
        with open(info, encoding="utf-8") as f:
            made = json.load(f)
        if made != settings:
            print(f"error: the pairs in {data} were made with {made}, not {settings}; delete {data}/pairs_*, "
                  "the pair dataset, the DPO and the reward model runs to make them again", file=sys.stderr)
            return False
    with open(info, "w", encoding="utf-8") as f:
        json.dump(settings, f)
    for split, limit in (("train", train_questions), ("test", None)):
        out = os.path.join(data, f"pairs_{split}.jsonl")
        if os.path.isfile(out):
            continue
        start = time.perf_counter()
        pairs, counts = verifier_pairs(sft, template, items(os.path.join(data, f"{split}.jsonl"), limit),
                                       load_verifier(verifier), samples=samples, max_new_tokens=MAX_NEW,
                                       seed=0 if split == "train" else 1)
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p) + "\n" for p in pairs)
        print(f"{split}: {counts['questions']} questions x {samples} samples, {counts['rewarded']:.1%} of the "
              f"answers right -> {counts['pairs']} pairs ({time.perf_counter() - start:.0f} s) -> {out}", flush=True)
    return True


def checkpoint_steps(workdir: str) -> list[int]:
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def evaluate_dpo(args, sft, template) -> list[dict]:
    """The SFT model (step 0) and every DPO checkpoint on the held-out test problems; prints the table."""
    dpo_config = load_config(args.dpo_config, args.dpo_set)
    test = items(os.path.join(args.data, "test.jsonl"))
    kl_questions = [it["question"] for it in test[:args.kl_questions]]
    val = {r["step"]: r for r in map(json.loads, open(os.path.join(dpo_config.workdir, "metrics.jsonl")))
           if "val_reward_accuracy" in r}
    rows = []
    print(f"\nOn the {len(test)} held-out test problems: exact match (greedy); sampled: the share of {args.eval_samples} "
          f"answers each (temperature 1) that end with the right number; KL(policy || SFT) on {len(kl_questions)} of "
          "them (one sampled answer each, nats per answer); pair acc: DPO's implicit-reward accuracy on the held-out pairs")
    print(f"{'model':>5}  {'step':>5}  {'exact match':>11}  {'sampled':>8}  {'KL':>12}  {'pair acc':>8}  {'seconds':>7}")
    for step in [0] + checkpoint_steps(dpo_config.workdir):
        start = time.perf_counter()
        em = sft if step == 0 else from_params(dpo_config, read_params(dpo_config.workdir, step)[1])
        em_result = chain_of_thought(em, template, test, max_new_tokens=MAX_NEW)
        sampled = verifier_pairs(em, template, test, final_number, samples=args.eval_samples, max_new_tokens=MAX_NEW,
                                 seed=2)[1]["rewarded"]
        kl = sampled_kl(em, sft, template, kl_questions, max_new_tokens=MAX_NEW) if step else {"kl": 0.0, "kl_stderr": 0.0}
        acc = val.get(step, {}).get("val_reward_accuracy", float("nan"))
        rows.append({"step": step, "exact_match": em_result["exact_match"], "sampled_accuracy": sampled, "kl": kl["kl"],
                     "kl_stderr": kl["kl_stderr"], "pair_accuracy": acc})
        name = "SFT" if step == 0 else "DPO"
        print(f"{name:>5}  {step:>5}  {em_result['exact_match']:>11.4f}  {sampled:>8.4f}  {kl['kl']:>7.3f}±{kl['kl_stderr']:.3f}  "
              f"{acc:>8.3f}  {time.perf_counter() - start:>7.0f}", flush=True)
    first, last = rows[0], rows[-1]
    print(f"\nDPO (step {last['step']}) against the SFT model: exact match {first['exact_match']:.4f} -> "
          f"{last['exact_match']:.4f} ({last['exact_match'] - first['exact_match']:+.4f}), sampled "
          f"{first['sampled_accuracy']:.4f} -> {last['sampled_accuracy']:.4f} "
          f"({last['sampled_accuracy'] - first['sampled_accuracy']:+.4f}), at KL {last['kl']:.3f}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft", default="runs/arith_sft")
    p.add_argument("--data", default="data/arithmetic", help="the task's problems (python -m data_prep.arithmetic)")
    p.add_argument("--dpo-config", default="configs/arith_dpo.yaml")
    p.add_argument("--reward-config", default="configs/reward_arith.yaml")
    p.add_argument("--pairs-config", default="data_prep/configs/arith_pairs.yaml")
    p.add_argument("--samples", type=int, default=8, help="answers sampled per question")
    p.add_argument("--train-questions", type=int, default=4000)
    p.add_argument("--verifier", default="jaxlm.eval.verifiers:checked_working",
                   help="labels the sampled answers (module:function); checked_working also checks every step")
    p.add_argument("--kl-questions", type=int, default=200, help="held-out questions the KL is estimated on")
    p.add_argument("--eval-samples", type=int, default=4, help="sampled answers per test problem (sampled accuracy)")
    p.add_argument("--figure", default="docs/preference_arith.png")
    p.add_argument("--output", help="write the numbers as JSON here")
    p.add_argument("--dpo-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for the DPO run (give it its own workdir=...)")
    p.add_argument("--reward-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for the reward model's run (give it its own workdir=...)")
    p.add_argument("--reward-only", action="store_true", help="train and score the reward model alone")
    args = p.parse_args()
    for path in (args.sft, os.path.join(args.data, "test.jsonl")):
        if not os.path.exists(path):
            print(f"error: {path} not found; train the SFT base first (see --help)", file=sys.stderr)
            return 2
    sft = load_workdir(args.sft)
    template = workdir_template(sft)
    if not make_pairs(sft, template, args.data, args.samples, args.train_questions, args.verifier):
        return 2
    pairs_dir = load_config(args.dpo_config).data.sources[0].path
    if not os.path.isfile(os.path.join(pairs_dir, "manifest.json")):
        run([sys.executable, "-m", "data_prep", "--config", args.pairs_config])
    runs = [(args.reward_config, args.reward_set)]
    if not args.reward_only:
        runs.insert(0, (args.dpo_config, args.dpo_set))
    for config, overrides in runs:
        workdir = load_config(config, overrides).workdir
        if not os.path.isdir(os.path.join(workdir, "checkpoints")):
            run([sys.executable, "-m", "jaxlm.main", "--config", config, "log.progress=false", *overrides])

    rows = [] if args.reward_only else evaluate_dpo(args, sft, template)

    reward_workdir = load_config(args.reward_config, args.reward_set).workdir
    rm = reward_accuracy(load_workdir(reward_workdir), pairs_dir)
    print(f"reward model ({reward_workdir}): held-out pair accuracy {rm['accuracy']:.4f} on {rm['count']} pairs of "
          f"test problems (chance 0.5, the verifier 1.0), mean score margin {rm['score_margin']:.3f}")
    if args.figure and rows:
        draw(rows, args.figure)
        print(f"wrote {args.figure}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"dpo": rows, "reward_model": rm}, f, indent=2)
    return 0


def draw(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(steps, [r["exact_match"] for r in rows], "o-", color="tab:blue", label="greedy exact match")
    left.plot(steps, [r["sampled_accuracy"] for r in rows], "s-", color="tab:green", label="sampled accuracy (T=1)")
    left.axhline(rows[0]["exact_match"], color="tab:blue", ls="--", lw=1)
    left.axhline(rows[0]["sampled_accuracy"], color="tab:green", ls="--", lw=1)
    left.set(xlabel="DPO step (0: the SFT model)", ylabel="held-out accuracy", title="Arithmetic task, 400 test problems")
    left.legend()
    right.errorbar(steps, [r["kl"] for r in rows], yerr=[r["kl_stderr"] for r in rows], fmt="o-", color="tab:red")
    right.set(xlabel="DPO step", ylabel="KL(policy || SFT), nats per answer", title="KL to the reference")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
