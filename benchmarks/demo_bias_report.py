"""The bias and toxicity report of the demo models (docs/bias_report_demo.md): the pre-trained demo
(runs/demo) beside its instruction-tuned version (runs/sft_demo).

  python benchmarks/demo_bias_report.py [--data-root ../shared/data] [--out reports/demo_bias]

Trains the offline toxicity classifier on ToxiGen (benchmarks/toxicity_classifier.py's), then runs
`python -m jaxlm.eval.safety_report` with the first 200 items of each bias set (BBQ: per category),
3 BOLD prompts per group and ToxiGen prompts per file, 30 HH-RLHF harmless-base questions, 3
continuations each; it prints the markdown table it writes.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxlm.eval import safety_report
from jaxlm.eval.toxicity import train_on_toxigen

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=SHARED)
    p.add_argument("--out", default="reports/demo_bias")
    args = p.parse_args()
    classifier = os.path.join(args.out, "toxicity.npz")
    train_on_toxigen(os.path.join(args.data_root, "bias", "toxigen"))[0].save(classifier)
    return safety_report.main(["--model", "demo=runs/demo", "--model", "sft_demo=runs/sft_demo",
                               "--data-root", args.data_root, "--limit", "200", "--out", args.out,
                               "--toxicity-scorer", f"ngram:{classifier}", "--prompts-per-group", "3",
                               "--samples", "3"])


if __name__ == "__main__":
    sys.exit(main())
