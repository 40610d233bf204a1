"""A verifiable task that needs no download: arithmetic word problems generated from a seed, with a
worked answer that ends in GSM8K's "#### <number>" form.

  python -m data_prep.arithmetic --out data/arithmetic [--train 4000] [--test 400] [--seed 0]

writes train.jsonl and test.jsonl, one problem a line as {"instruction", "input", "output",
"answer"} (the Alpaca layout the instruction-data sources read). No test question appears in the
train split. Problems take one to three steps over small whole numbers (+, -, x), so a small model
can learn them and a verifier can check any answer exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena", "Milo", "Nia"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards", "eggs", "plums"]


def _step(rng: random.Random, name: str, item: str, have: int) -> tuple[str, str, int]:
    """One more event in the story: (sentence, working, new total)."""
    kind = rng.choice(["add", "sub", "mul"] if have <= 12 else ["add", "sub"])
    if kind == "add":
        n = rng.randint(1, 20)
        return f"{name} gets {n} more {item}.", f"{have} + {n} = {have + n}", have + n
    if kind == "sub" and have > 1:
        n = rng.randint(1, have - 1)
        return f"{name} gives away {n} {item}.", f"{have} - {n} = {have - n}", have - n
    n = rng.randint(2, 4)
    return f"{name} ends up with {n} times as many {item}.", f"{have} x {n} = {have * n}", have * n


def make_problem(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    have = rng.randint(1, 20)
    sentences, working = [f"{name} has {have} {item}."], []
    for _ in range(rng.randint(1, 3)):
        sentence, work, have = _step(rng, name, item, have)
        sentences.append(sentence)
        working.append(work)
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    output = "\n".join(working) + f"\n#### {have}"
    return {"instruction": question, "input": "", "output": output, "answer": str(have)}


def make_splits(n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    test, seen = [], set()
    while len(test) < n_test:
        p = make_problem(rng)
        if p["instruction"] not in seen:
            seen.add(p["instruction"])
            test.append(p)
    train = []
    while len(train) < n_train:
        p = make_problem(rng)
        if p["instruction"] not in seen:
            seen.add(p["instruction"])
            train.append(p)
    return train, test


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.arithmetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.train < 0 or args.test < 0:
        print("error: --train and --test must be >= 0", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
        train, test = make_splits(args.train, args.test, args.seed)
        for split, rows in (("train", train), ("test", test)):
            with open(os.path.join(args.out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    except OSError as e:
        print(f"error: cannot write to {args.out!r} ({e})", file=sys.stderr)
        return 2
    print(f"wrote {len(train)} train and {len(test)} test problems to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
