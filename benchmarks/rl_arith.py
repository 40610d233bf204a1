"""The shipped verifiable task end to end: the SFT base, then GRPO from it; held-out exact match
before and after, the curve, and the KL to the reference.

  python benchmarks/rl_arith.py [--sft configs/arith_sft.yaml] [--grpo configs/arith_grpo.yaml] [--limit 400] [k=v ...]

Runs, each skipped when its output is there already (a finished workdir resumes to its end at once):
  python -m data_prep.arithmetic --out data/arithmetic
  python -m data_prep --config data_prep/configs/arith_sft.yaml
  python -m jaxlm.main --config configs/arith_sft.yaml
  python -m jaxlm.main --config configs/arith_grpo.yaml [k=v ...]      (overrides go to the GRPO run)
then scores both models the same way (greedy answers to the first --limit held-out problems,
exact match of the final "#### n", as `jaxlm.eval --chain-of-thought` does) and prints the GRPO
run's curve from its metrics.jsonl: held-out exact match every rl.eval_every steps, the training
reward, and the KL to the reference (k3 and k1 estimates per response token, on the policy's own
samples).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from jaxlm.config import load_config
from jaxlm.eval.chat import workdir_template
from jaxlm.eval.instruct import chain_of_thought, read_cot_items
from jaxlm.eval.loading import load_workdir


def sh(*cmd: str) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], check=True)


def exact_match(workdir: str, items: list[dict], max_new_tokens: int) -> float:
    em = load_workdir(workdir)
    return chain_of_thought(em, workdir_template(em), items, max_new_tokens=max_new_tokens)["exact_match"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft", default="configs/arith_sft.yaml")
    p.add_argument("--grpo", default="configs/arith_grpo.yaml")
    p.add_argument("--limit", type=int, default=400, help="held-out problems scored (the first N)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="for the GRPO run")
    args = p.parse_args()

    sft, grpo = load_config(args.sft), load_config(args.grpo, args.overrides)
    if not os.path.isfile(grpo.rl.prompts):
        sh("-m", "data_prep.arithmetic", "--out", os.path.dirname(grpo.rl.prompts))
    if not os.path.isfile(os.path.join(sft.data.sources[0].path, "manifest.json")):
        sh("-m", "data_prep", "--config", sft.data.prepare)
    sh("-m", "jaxlm.main", "--config", args.sft, "log.progress=false")
    sh("-m", "jaxlm.main", "--config", args.grpo, "log.progress=false", *args.overrides)

    items = read_cot_items(grpo.rl.eval_prompts or "data/arithmetic/test.jsonl")[:args.limit]
    before = exact_match(sft.workdir, items, grpo.rl.max_new_tokens)
    after = exact_match(grpo.workdir, items, grpo.rl.max_new_tokens)
    with open(os.path.join(grpo.workdir, "metrics.jsonl"), encoding="utf-8") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    steps = {m["step"]: m for m in metrics if "loss" in m}
    evals = {m["step"]: m["eval_reward"] for m in metrics if "eval_reward" in m}

    print(f"\nGRPO run {grpo.workdir} (reference {grpo.init.from_}); held-out curve (greedy exact match on "
          f"{grpo.rl.eval_limit} problems) and training rollouts, mean of the {grpo.rl.eval_every} steps up to each:")
    print(f"{'step':>5s} {'exact match':>12s} {'reward':>7s} {'kl_k3':>8s} {'kl_k1':>8s} {'entropy':>8s} {'length':>7s}")
    print(f"{0:5d} {before:12.3f}   (the SFT base)")
    for s in sorted(evals):
        window = [steps[k] for k in range(max(1, s - grpo.rl.eval_every + 1), s + 1) if k in steps]
        mean = {k: np.mean([m[k] for m in window]) for k in ("reward_mean", "kl_k3", "kl_k1", "entropy", "response_length")}
        print(f"{s:5d} {evals[s]:12.3f} {mean['reward_mean']:7.3f} {mean['kl_k3']:8.4f} {mean['kl_k1']:8.4f} "
              f"{mean['entropy']:8.3f} {mean['response_length']:7.1f}")
    last = [steps[k] for k in sorted(steps)[-5:]]
    print(f"\nheld-out exact match, first {len(items)} test problems (greedy, as jaxlm.eval --chain-of-thought):")
    print(f"{'model':8s} {'exact match':>12s}")
    print(f"{'SFT':8s} {before:12.3f}")
    print(f"{'GRPO':8s} {after:12.3f}")
    print(f"change: {after - before:+.3f} ({(after - before) * len(items):+.0f} of {len(items)} problems); "
          f"KL to the reference over the last {len(last)} steps, per response token: "
          f"k3 {np.mean([m['kl_k3'] for m in last]):.4f}, k1 {np.mean([m['kl_k1'] for m in last]):.4f}")


if __name__ == "__main__":
    main()
