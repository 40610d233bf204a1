"""Char-level Tiny Shakespeare race: wall time to a loss on the whole validation split, side by side.

    python benchmarks/shakespeare_race.py --nanogpt PATH/TO/nanoGPT [--only speedrun] [--workdir runs/race]
    python benchmarks/shakespeare_race.py            # no checkout: the reference is a recorded figure

One invocation runs, one after the other on the same machine (in this order, each row printed as
it finishes):
  speedrun   jaxlm's speedrun recipe (configs/shakespeare_speedrun.yaml, chosen by a recorded sweep);
  nanoGPT    the reference's own CPU recipe from its README (4 layers x 128, context 64, batch 12,
             2,000 steps, no dropout, CPU PyTorch), its train.py and prepare.py run from a copy of
             the checkout named on the command line (never part of this project);
  exact      jaxlm on nanoGPT's recipe (configs/shakespeare_char.yaml).

Quality, the same for all three: the mean next-character loss (nats) over the whole validation
split, the last 10% of the text (111,540 characters), cut into consecutive windows of the model's
context (64): every character after the first is predicted once, from the window's characters
before it. Each model's logits come from its own code (nanoGPT's model.py from the checkout,
jaxlm's Transformer); the loss is then computed by one function here, in float64.
Time: from the training process's start to its exit (start-up, compilation, the recipe's own
evaluations and checkpoint writes included); preparing the data is not timed for either.
Without a checkout the reference row is the figure recorded in docs/benchmarks.md, labelled as
recorded, and no ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(REPO, "..", "shared", "data", "text", "tinyshakespeare", "input.txt")
TARGET_LOSS = 1.89
CONTEXT = 64
# nanoGPT's README, "I only have a macbook": its CPU recipe, plus a checkpoint at every eval (the
# shakespeare config only saves when the eval improves) so the model after 2,000 steps is on disk.
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
                "--always_save_checkpoint=True"]
NANOGPT_STEPS, NANOGPT_BATCH = 2000, 12
# Recorded with --nanogpt on this kind of machine, quiet (docs/benchmarks.md, 2026-12-03): shown
# only when no checkout is given, labelled as recorded, with no ratio.
RECORDED = {"full_val": 1.8983, "wall_s": 117.4}
NANOGPT_LABEL = "nanoGPT (PyTorch CPU), its recipe"
JAXLM_RECIPES = {"exact": "configs/shakespeare_char.yaml", "speedrun": "configs/shakespeare_speedrun.yaml"}


def full_val_loss(logits_fn: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, context: int = CONTEXT,
                  rows: int = 64) -> float:
    """Mean NLL of ids[1:] given consecutive windows of `context` inputs; logits_fn: (B, T) -> (B, T, V)."""
    starts = list(range(0, len(ids) - 1, context))
    total, count = 0.0, 0
    full = [s for s in starts if s + context + 1 <= len(ids)]
    last = [s for s in starts if s + context + 1 > len(ids)]
    for group in [full[i:i + rows] for i in range(0, len(full), rows)] + [[s] for s in last]:
        n = min(context, len(ids) - 1 - group[0])
        x = np.stack([ids[s:s + n] for s in group])
        y = np.stack([ids[s + 1:s + 1 + n] for s in group])
        logits = np.asarray(logits_fn(x), np.float64)
        logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
        picked = np.take_along_axis(logits, y[..., None], -1)[..., 0]
        total += float(np.sum(logz - picked))
        count += y.size
    assert count == len(ids) - 1
    return total / count


def val_text(text_path: str) -> str:
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    return text[int(len(text) * 0.9):]  # the split both data pipelines make


# ------------------------------------------------------------------------------------------------
# nanoGPT, run from a copy of the user's checkout


def run_nanogpt(checkout: str, text_path: str, workdir: str) -> dict:
    for needed in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                   "data/shakespeare_char/prepare.py"):
        if not os.path.isfile(os.path.join(checkout, needed)):
            sys.exit(f"error: --nanogpt {checkout} is not a nanoGPT checkout ({needed} is missing); "
                     "give the folder of a clone of github.com/karpathy/nanoGPT")
    copy = os.path.join(workdir, "nanogpt")
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "out*", "*.bin", "*.pkl"))
    data_dir = os.path.join(copy, "data", "shakespeare_char")
    shutil.copyfile(text_path, os.path.join(data_dir, "input.txt"))  # its prepare.py would download it
    subprocess.run([sys.executable, "prepare.py"], cwd=data_dir, check=True, stdout=subprocess.DEVNULL)
    out_dir = os.path.join(workdir, "nanogpt_out")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(os.path.join(workdir, "nanogpt_train.log"), "w") as log:
        subprocess.run([sys.executable, "train.py", *NANOGPT_ARGS, f"--out_dir={out_dir}"], cwd=copy,
                       check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    return {"wall": wall, "load": load, "steps": NANOGPT_STEPS, "tokens": NANOGPT_STEPS * NANOGPT_BATCH * CONTEXT,
            "val": nanogpt_full_val(copy, out_dir, text_path)}


def nanogpt_full_val(copy: str, out_dir: str, text_path: str) -> float:
    import torch  # only with a checkout: the reference's framework

    sys.path.insert(0, copy)
    try:
        from model import GPT, GPTConfig  # the checkout's own model code
    finally:
        sys.path.remove(copy)
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)
    if ckpt["iter_num"] != NANOGPT_STEPS:
        sys.exit(f"error: nanoGPT's last checkpoint is of step {ckpt['iter_num']}, not {NANOGPT_STEPS}")
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    with open(text_path, encoding="utf-8") as f:
        chars = sorted(set(f.read()))  # prepare.py's vocabulary, rebuilt rather than unpickled
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in val_text(text_path)], np.int64)

    def logits(x):
        with torch.no_grad():
            t = torch.from_numpy(x)
            out, _ = model(t, t)  # with targets, nanoGPT returns the logits of every position
        return out.numpy()

    return full_val_loss(logits, ids)


# ------------------------------------------------------------------------------------------------
# jaxlm


def run_jaxlm(recipe: str, data: str, text: str, workdir: str, overrides: list[str]) -> dict:
    run_dir = os.path.join(workdir, f"jaxlm_{os.path.splitext(os.path.basename(recipe))[0]}")
    command = [sys.executable, "-m", "jaxlm.main", "--config", os.path.join(REPO, recipe), f"workdir={run_dir}",
               f"data.sources=[{{path: {data}}}]", "log.progress=false", *overrides]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(os.path.join(workdir, os.path.basename(run_dir) + ".log"), "w") as log:
        subprocess.run(command, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = max(r["step"] for r in rows if "loss" in r)
    tokens = max(r.get("tokens_seen", 0) for r in rows if r["step"] == steps)
    return {"wall": wall, "load": load, "steps": steps, "tokens": int(tokens), "val": jaxlm_full_val(run_dir, data, text)}


def jaxlm_full_val(run_dir: str, data: str, text: str) -> float:
    import jax
    from flax import nnx

    from jaxlm.data.shards import DocumentSource, open_dataset
    from jaxlm.eval.loading import graphdef_of
    from jaxlm.eval.tokenizer import Tokenizer
    from jaxlm.train.checkpoint_reader import read_params

    config, params = read_params(run_dir)  # schedule-free runs: their averaged parameters
    tokenizer = Tokenizer.from_dataset(data)
    ids = np.asarray(DocumentSource(open_dataset(data), "val")[0])
    ids = ids[:-1] if ids[-1] == tokenizer.eos_id else ids  # the document's closing EOS is not text
    if tokenizer.decode(ids) != text:
        sys.exit(f"error: {data}'s validation split is not the last 10% of the text; remake it from --text")
    model = nnx.merge(graphdef_of(config.model), params)
    forward = jax.jit(lambda x: model(x))
    return full_val_loss(lambda x: forward(x), ids, context=min(config.data.seq_len, CONTEXT))


# ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", help="a nanoGPT checkout (git clone of karpathy/nanoGPT) to run as the reference")
    parser.add_argument("--text", default=TEXT, help="Tiny Shakespeare input.txt")
    parser.add_argument("--data", default=os.path.join(REPO, "data", "shakespeare_char"),
                        help="jaxlm's prepared dataset (made from --text when missing)")
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "shakespeare_race"))
    parser.add_argument("--only", action="append", choices=["nanogpt", *JAXLM_RECIPES],
                        help="run only these rows (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides for jaxlm's speedrun recipe")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the race is on CPU; no accelerator probing in this process
    if not os.path.isfile(args.text):
        sys.exit(f"error: --text {args.text} does not exist; give Tiny Shakespeare's input.txt")
    if args.nanogpt and not os.path.isdir(args.nanogpt):
        sys.exit(f"error: --nanogpt {args.nanogpt} is not a folder; give a nanoGPT checkout")
    if not os.path.isfile(os.path.join(args.data, "manifest.json")):
        subprocess.run([sys.executable, "-m", "data_prep", "--config",
                        os.path.join(REPO, "data_prep", "configs", "shakespeare_char.yaml"), f"output={args.data}"],
                       cwd=REPO, check=True)
    chars = len(val_text(args.text))
    if os.path.exists(args.workdir):
        shutil.rmtree(args.workdir)  # fresh runs: nothing resumes from an earlier race
    os.makedirs(args.workdir)
    wanted = args.only or ["nanogpt", *JAXLM_RECIPES]

    # Each row is printed as it finishes (the whole race takes minutes to hours on a loaded machine).
    results: dict[str, dict] = {}
    for name in ("speedrun", "nanogpt", "exact"):
        if name not in wanted or (name == "nanogpt" and not args.nanogpt):
            continue
        if name == "nanogpt":
            label, result = NANOGPT_LABEL, run_nanogpt(os.path.abspath(args.nanogpt), args.text, args.workdir)
        else:
            label = "jaxlm, nanoGPT's recipe" if name == "exact" else "jaxlm, speedrun recipe"
            result = run_jaxlm(JAXLM_RECIPES[name], os.path.abspath(args.data), val_text(args.text), args.workdir,
                               args.overrides if name == "speedrun" else [])
        results[label] = result
        print(f"{label}: {json.dumps({k: round(v, 4) for k, v in result.items()})}", flush=True)
    print_table(results, chars)


def print_table(results: dict, chars: int) -> None:
    ref = results.get(NANOGPT_LABEL)
    print(f"\nloss on the whole validation split ({chars:,} characters, windows of {CONTEXT}); "
          f"wall = process start to end of training")
    print(f"{'':36s} {'val loss':>9s} {'wall s':>8s} {'steps':>6s} {'tokens':>10s} {'load':>5s}  vs nanoGPT")
    if ref is None:
        print(f"{'nanoGPT, RECORDED (not run here)':36s} {RECORDED['full_val']:9.4f} {RECORDED['wall_s']:8.1f} "
              f"{NANOGPT_STEPS:6d} {NANOGPT_STEPS * NANOGPT_BATCH * CONTEXT:10,d} {'':>5s}  "
              f"(recorded figure, another run: no ratio)")
    for name, r in results.items():
        ratio = "" if ref is None or r is ref else f"{r['wall'] / ref['wall']:.2f}x"
        met = "" if r is ref or ref is None else (
            "  target MET" if r["val"] <= TARGET_LOSS and r["wall"] <= 0.5 * ref["wall"] else "  target not met")
        print(f"{name:36s} {r['val']:9.4f} {r['wall']:8.1f} {r['steps']:6d} {r['tokens']:10,d} {r['load']:5.1f}  "
              f"{ratio}{met}")
    print(f"target: val <= {TARGET_LOSS} in <= 0.5x nanoGPT's wall time, in the same run; "
          f"{os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.1f}")
    if not math.isfinite(sum(r["val"] for r in results.values())):
        sys.exit("error: a run ended with a non-finite validation loss")


if __name__ == "__main__":
    main()
