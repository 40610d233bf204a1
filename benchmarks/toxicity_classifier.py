"""The offline toxicity classifier's accuracy on ToxiGen's held-out statements, overall and per
target group, beside the majority-class baseline.

  python benchmarks/toxicity_classifier.py [--toxigen ../shared/data/bias/toxigen] [--out clf.npz]

Trains jaxlm's hashed n-gram logistic regression on the train split of ToxiGen's human-written
statements (jaxlm.eval.toxicity.read_toxigen: 1 in 5 held out by a hash of the text).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from jaxlm.eval.toxicity import read_toxigen, train_on_toxigen

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toxigen", default=os.path.join(SHARED, "bias", "toxigen"))
    p.add_argument("--out", help="also save the classifier here (.npz)")
    args = p.parse_args()
    if not os.path.isdir(args.toxigen):
        print(f"error: {args.toxigen} not found; pass --toxigen", file=sys.stderr)
        return 2
    clf, report = train_on_toxigen(args.toxigen)
    if args.out:
        clf.save(args.out)
    test = [it for it in read_toxigen(args.toxigen) if it["split"] == "test"]
    hate = float(np.mean([it["label"] for it in test]))
    t = report["test"]
    print(f"ToxiGen statements: {report['train']['items']} train, {t['items']} held out ({hate:.1%} hate)")
    print(f"{'group':22s} {'held-out':>8s} {'accuracy':>9s}")
    for group, g in t["by_group"].items():
        print(f"{group:22s} {g['items']:8d} {g['accuracy']:9.3f}")
    print(f"{'all':22s} {t['items']:8d} {t['accuracy']:9.3f}   (majority class: {max(hate, 1 - hate):.3f}; "
          f"train accuracy {report['train']['accuracy']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
