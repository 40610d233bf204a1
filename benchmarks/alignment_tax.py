"""The alignment tax of the demo models: each tuned model against the model it started from, in the
table `python -m jaxlm.eval --alignment-tax` prints (jaxlm/eval/alignment_tax.py).

  python benchmarks/alignment_tax.py [--data-root ../shared/data] [--limit 300] [--which arith,demo]

  arith  the arithmetic task's DPO model (configs/arith_dpo.yaml) against its SFT base
         (configs/arith_sft.yaml), which had no pre-training: the response loss on the base's
         training data's validation split (the worked answers of the test problems), the zero-shot
         harness (--tasks, with --data-root), exact match on the 400 test problems with the
         verifier's win rate, and the reward model's (configs/reward_arith.yaml) win rate on the
         prompts of the held-out pairs. Run benchmarks/preference_arith.py first.
  demo   the instruction-tuned demo model (configs/sft_demo.yaml) against the pre-trained one
         (configs/demo.yaml): perplexity on the demo corpus's validation split and the harness.
A pair is skipped, saying so, when its runs are missing. Numbers depend on the machine only
through time; the docs' table was taken on a shared, loaded 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from jaxlm.config import load_config
from jaxlm.eval.alignment_tax import alignment_tax, format_table
from jaxlm.eval.loading import load_workdir


def arith(args) -> dict:
    dpo, rm = load_config("configs/arith_dpo.yaml"), load_config("configs/reward_arith.yaml")
    base = load_config("configs/arith_sft.yaml")
    with open("data/arithmetic/test.jsonl", encoding="utf-8") as f:
        items = [{"question": r["instruction"], "answer": r["answer"]} for r in map(json.loads, f)]
    return dict(runs=(dpo.workdir, base.workdir, rm.workdir),
                kw=dict(instruct_dataset=base.data.sources[0].path, items=items, max_new_tokens=48,
                        pairs=dpo.data.sources[0].path))


def demo(args) -> dict:
    tuned, base = load_config("configs/sft_demo.yaml"), load_config("configs/demo.yaml")
    return dict(runs=(tuned.workdir, base.workdir, None), kw=dict(dataset=base.data.sources[0].path))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", default="arith,demo")
    p.add_argument("--data-root", help="local data of the n-shot tasks (e.g. ../shared/data); without it, no harness rows")
    p.add_argument("--tasks", default="arc_easy,piqa")
    p.add_argument("--limit", type=int, default=400, help="items per task, test problems, prompts per win rate")
    p.add_argument("--max-documents", type=int, default=400, help="validation documents for the perplexity")
    p.add_argument("--output", help="write the tables as JSON here")
    args = p.parse_args()
    results = {}
    for name in args.which.split(","):
        spec = {"arith": arith, "demo": demo}[name](args)
        tuned, base, reward = spec["runs"]
        missing = [w for w in (tuned, base, reward) if w and not os.path.isdir(os.path.join(w, "checkpoints"))]
        if missing:
            print(f"{name}: skipped, {', '.join(missing)} not trained (see this script's --help)\n")
            continue
        kw = dict(spec["kw"])
        if args.data_root:
            kw.update(tasks=args.tasks.split(","), data_root=args.data_root)
        start = time.perf_counter()
        result = alignment_tax(load_workdir(tuned), load_workdir(base), reward=load_workdir(reward) if reward else None,
                               limit=args.limit, max_documents=args.max_documents, **kw)
        print(f"{name}: {tuned} (tuned) against {base} (base)  [{time.perf_counter() - start:.0f} s]")
        print(format_table(result) + "\n", flush=True)
        results[name] = result
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
