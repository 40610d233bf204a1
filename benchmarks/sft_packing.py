"""What whole-example packing does to an instruction dataset: row slots used, targets trained, held-out modules.

    python benchmarks/sft_packing.py --dataset data/sft_demo [--seq-len 128 256 512] [--batch-rows 8]

For each context length, one pass over each split through `jaxlm.data.loader` (whole examples,
never split across rows, see jaxlm/data/packing.py) counts: examples, rows, the share of row
slots that hold a real token (the rest is padding at row ends), the share of targets in the loss
(response tokens), and examples longer than the context (truncated by the loader). For a
python_instruct dataset it also counts the top-level modules of each split (held out whole).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlm.data.chat import dataset_template  # noqa: E402
from jaxlm.data.format import record_tokens  # noqa: E402
from jaxlm.data.loader import build_loader  # noqa: E402
from jaxlm.data.shards import DocumentSource, open_dataset  # noqa: E402


def pass_over(dataset: str, split: str, seq_len: int, batch_rows: int) -> dict:
    rows = real = trained = examples = 0
    for batch in build_loader([(dataset, 1.0)], split, seq_len=seq_len, batch_rows=batch_rows, num_epochs=1,
                              shuffle=False, prefetch=0):
        used = batch["segment_ids"] > 0
        rows += int(used.any(axis=1).sum())
        real += int(used.sum())
        trained += int(batch["loss_mask"].sum())
        examples += int(batch["segment_ids"].max(axis=1).sum())
    return dict(examples=examples, rows=rows, slots_used=real / (rows * seq_len), targets_trained=trained / real)


def modules(dataset: str, split: str) -> set[str] | None:
    """Top-level modules named in the questions of an embedded python_instruct set (None for others)."""
    import sentencepiece as spm

    info = open_dataset(dataset)
    if not any(s.get("type") == "python_instruct" for s in info.manifest.get("sources", [])):
        return None
    sp = spm.SentencePieceProcessor(model_file=info.tokenizer_path)
    docs = DocumentSource(info, split)
    found = set()
    for i in range(len(docs)):
        text = sp.decode(record_tokens(docs[i]).tolist())
        found.add(text.split("`")[1].split(".")[0])
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seq-len", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--batch-rows", type=int, default=8)
    args = p.parse_args()
    if dataset_template(args.dataset) is None:
        sys.exit(f"{args.dataset} is not an instruction dataset (its manifest has no chat block)")
    info = open_dataset(args.dataset)
    lengths = {s: np.array([len(DocumentSource(info, s)[i]) for i in range(info.split(s).documents)]) for s in ("train", "val")}
    print(f"dataset {args.dataset}: train {len(lengths['train']):,} examples, val {len(lengths['val']):,}; "
          f"tokens per example median {int(np.median(lengths['train']))}, p99 {int(np.percentile(lengths['train'], 99))}, "
          f"max {lengths['train'].max()}")
    mods = {s: modules(args.dataset, s) for s in ("train", "val")}
    if mods["train"] is not None:
        print(f"modules: train {len(mods['train'])}, val {len(mods['val'])}, shared {len(mods['train'] & mods['val'])}")
    print(f"{'split':<6}{'seq_len':>8}{'examples':>10}{'rows':>8}{'slots used':>12}{'trained':>10}{'> seq_len':>11}")
    for seq_len in args.seq_len:
        for split in ("train", "val"):
            r = pass_over(args.dataset, split, seq_len, args.batch_rows)
            print(f"{split:<6}{seq_len:>8}{r['examples']:>10,}{r['rows']:>8,}{r['slots_used']:>12.1%}"
                  f"{r['targets_trained']:>10.1%}{int((lengths[split] > seq_len).sum()):>11,}")


if __name__ == "__main__":
    main()
