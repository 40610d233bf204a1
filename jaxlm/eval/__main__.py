"""Evaluate a model: perplexity / bits per byte, or n-shot benchmarks.

  python -m jaxlm.eval --workdir W --text FILE [--stride N]
  python -m jaxlm.eval --workdir W --val [--dataset DIR] [--max-documents N]
  python -m jaxlm.eval --workdir W --instruct [--dataset DIR] [--max-documents N]   (loss on response tokens)
  python -m jaxlm.eval --workdir W --chain-of-thought ITEMS.jsonl [--limit N] [--max-new-tokens N]
  python -m jaxlm.eval --workdir W --tasks hellaswag,piqa --shots 0 [--limit N] [--output results.json]
  python -m jaxlm.eval --hf DIR ...            (a transformers checkpoint folder instead of a run)
  python -m jaxlm.eval --workdir W --suite bias [--bias-sets crows_pairs,bbq] [--data-root DIR]
  python -m jaxlm.eval --list-tasks [--data-root DIR]
  python -m jaxlm.eval --reward RM --pairs DIR [--split val]        (reward model accuracy on held-out pairs)
  python -m jaxlm.eval --workdir W --pairs DIR --reference-logps OUT (DIR's pairs with W's log-probabilities)
  python -m jaxlm.eval --workdir TUNED --base BASE --alignment-tax [--dataset PRETRAIN] [--instruct-dataset SFT] [--tasks ...]
                       [--chain-of-thought ITEMS] [--reward RM --pairs DIR]   (one table, docs/preference_tuning.md)

Task data comes from the Hugging Face Hub through `datasets` (cached after the first download),
or from local files with --data-root / --task-file; --list-tasks says which for each task.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxlm.config import ConfigError
from jaxlm.data.format import DataFormatError
from jaxlm.eval import alignment_tax, bias, harness, instruct, pairs, perplexity
from jaxlm.eval.chat import hf_template, workdir_template
from jaxlm.eval.contamination import NgramIndex
from jaxlm.eval.errors import EvalError
from jaxlm.eval.loading import load_hf_dir, load_workdir
from jaxlm.eval.tasks import builtin_tasks, check_data, data_source, default_data_root, load_task
from jaxlm.extras import MissingExtra
from jaxlm.interop.hf import InteropError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxlm.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workdir", help="training run folder (latest valid checkpoint, its tokenizer)")
    src.add_argument("--hf", help="transformers checkpoint folder (with tokenizer.model, as jaxlm.export writes)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--text", help="UTF-8 text file: perplexity and bits per byte")
    what.add_argument("--val", action="store_true", help="the validation split of --dataset (default: the run's first source)")
    what.add_argument("--instruct", action="store_true",
                      help="instruction loss: mean NLL of the response tokens of --dataset's validation split")
    # --chain-of-thought and --tasks are measurements of their own, or rows of --alignment-tax's table
    p.add_argument("--chain-of-thought", metavar="ITEMS",
                   help="JSON/JSONL {question, answer} items (GSM8K form): exact match of chat answers after '####'")
    p.add_argument("--tasks", help="comma-separated task names or task spec .yaml files")
    what.add_argument("--list-tasks", action="store_true", help="print the built-in tasks and exit")
    what.add_argument("--suite", choices=["bias"], help="bias: CrowS-Pairs, BBQ, WinoBias and Winogender (docs/safety.md)")
    what.add_argument("--reference-logps", metavar="OUT", help="write a copy of --pairs with the model's log-probabilities "
                      "of both responses in its records (train.objective dpo/ipo with preference.reference=cached)")
    p.add_argument("--alignment-tax", action="store_true", help="the tuned model (--workdir) against --base: "
                   "perplexity on --dataset, --tasks, --chain-of-thought exact match, win rate")
    p.add_argument("--reward", metavar="RM", help="a reward model's run folder: with --pairs alone, its accuracy on the "
                   "pairs; with --alignment-tax, the judge of the win rate")
    p.add_argument("--pairs", metavar="DIR", help="a pair dataset (data_prep's hh_rlhf, pairs or alpaca_eval sources)")
    p.add_argument("--split", default="val", help="--pairs: the split to read (default val)")
    p.add_argument("--base", metavar="WORKDIR", help="--alignment-tax: the model the tuned one started from")
    p.add_argument("--instruct-dataset", metavar="DIR", help="--alignment-tax: an instruction dataset whose "
                   "validation responses both models are scored on")
    p.add_argument("--bias-sets", help="--suite bias: comma-separated subset of crows_pairs,bbq,winobias,winogender")
    p.add_argument("--system", default="", help="--suite bias: text put before every BBQ prompt (prompt engineering)")
    p.add_argument("--dataset", help="data_prep folder for --val / --instruct")
    p.add_argument("--max-new-tokens", type=int, default=256, help="--chain-of-thought: longest answer")
    p.add_argument("--max-documents", type=int, help="--val: only the first N documents")
    p.add_argument("--stride", type=int, help="sliding-window stride in tokens (default: half the context)")
    p.add_argument("--context", type=int, help="evaluate with this many tokens of context (default: the trained length)")
    p.add_argument("--shots", type=int, default=0, help="demonstrations per prompt (default 0)")
    p.add_argument("--limit", type=int, help="only the first N items of each task")
    p.add_argument("--seed", type=int, default=1234, help="seed of the demonstration draw")
    p.add_argument("--data-root", help="read the tasks' data from local files under this folder (the specs' "
                   "paths) instead of the Hugging Face Hub (default: $JAXLM_EVAL_DATA, else the Hub)")
    p.add_argument("--task-file", action="append", default=[], metavar="TASK=PATH", help="use this local data file for a task")
    p.add_argument("--contamination", metavar="INDEX.npz", help="training n-gram index (python -m jaxlm.eval.contamination)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--log-samples", action="store_true", help="include every item's prediction in the JSON")
    return p


def run(args) -> int:
    if args.list_tasks:  # where each task's data would come from with these arguments
        print(f"{'task':16s} {'kind':16s} data")
        for name in builtin_tasks():
            task = load_task(name)
            try:
                where = data_source(task, args.data_root)
            except EvalError:
                where = f"local files only: --data-root DIR holding {task.path}, or --task-file {name}=PATH"
            print(f"{name:16s} {task.kind:16s} {where}")
        return 0
    if args.reward and args.pairs and not (args.workdir or args.hf or args.alignment_tax):
        result = pairs.reward_accuracy(load_workdir(args.reward), args.pairs, split=args.split, limit=args.limit,
                                       batch_pairs=args.batch_size)
        return _done(args, result, _kv(result))
    if not (args.workdir or args.hf):
        raise EvalError("give the model: --workdir RUN_DIR or --hf CHECKPOINT_DIR (or --reward RM --pairs DIR)")
    if not (args.text or args.val or args.instruct or args.chain_of_thought or args.tasks or args.suite
            or args.reference_logps or args.alignment_tax):
        raise EvalError("say what to evaluate: --text FILE, --val, --instruct, --chain-of-thought ITEMS, "
                        "--tasks NAMES, --suite bias, --reference-logps OUT or --alignment-tax")
    if args.reference_logps and not args.pairs:
        raise EvalError("--reference-logps OUT needs --pairs DIR (the pair dataset to copy with the log-probabilities)")
    if args.alignment_tax and not (args.workdir and args.base):
        raise EvalError("--alignment-tax compares two runs: --workdir TUNED --base BASE")
    asked = [flag for flag, on in (("--text", args.text), ("--val", args.val), ("--instruct", args.instruct),
                                   ("--chain-of-thought", args.chain_of_thought), ("--tasks", args.tasks),
                                   ("--suite", args.suite), ("--reference-logps", args.reference_logps),
                                   ("--alignment-tax", args.alignment_tax)) if on]
    if len(asked) > 1 and not args.alignment_tax:
        raise EvalError(f"choose one measurement, not {' and '.join(asked)} (--alignment-tax takes several)")
    if args.alignment_tax and (args.text or args.instruct or args.suite or args.reference_logps):
        raise EvalError("--alignment-tax measures --dataset perplexity, --tasks, --chain-of-thought and the "
                        "--reward win rate; run the others on their own")
    items = instruct.read_cot_items(args.chain_of_thought)[:args.limit] if args.chain_of_thought else None
    if args.suite:  # the data is checked before the model loads
        sets = [s.strip() for s in (args.bias_sets or ",".join(bias.SETS)).split(",") if s.strip()]
        data_root = args.data_root or default_data_root()
        bias.check_data(data_root, sets)
    task_files = {}
    for spec in args.task_file:
        name, sep, path = spec.partition("=")
        if not sep:
            raise EvalError(f"--task-file {spec!r} must look like TASK=PATH")
        task_files[name] = path
    if args.tasks:  # unknown names and missing local data fail before the model loads
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        for name in names:
            task = load_task(name)
            check_data(task, args.data_root, task_files.get(task.name))
    index = NgramIndex.load(args.contamination) if args.contamination else None
    em = load_workdir(args.workdir, args.context) if args.workdir else load_hf_dir(args.hf, args.context)

    if args.reference_logps:
        manifest = pairs.write_reference_logprobs(em, args.pairs, args.reference_logps,
                                                  model=args.workdir or args.hf, batch_pairs=args.batch_size)
        counts = {k: v["documents"] for k, v in manifest["splits"].items()}
        return _done(args, manifest["reference"], f"wrote {args.reference_logps}: {counts} pairs with the reference "
                                                  f"log-probabilities of {args.workdir or args.hf}")
    if args.alignment_tax:
        result = alignment_tax.alignment_tax(
            em, load_workdir(args.base, args.context), dataset=args.dataset, tasks=names if args.tasks else (),
            shots=args.shots, limit=args.limit, data_root=args.data_root, task_files=task_files, items=items,
            max_new_tokens=args.max_new_tokens, reward=load_workdir(args.reward) if args.reward else None,
            pairs=args.pairs, split=args.split, batch_size=args.batch_size, max_documents=args.max_documents,
            instruct_dataset=args.instruct_dataset)
        return _done(args, result, alignment_tax.format_table(result))
    if args.text:
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise EvalError(f"cannot read {args.text!r} as UTF-8 text ({e})") from None
        result = perplexity.text_perplexity(em, text, stride=args.stride, source=args.text, batch_size=args.batch_size)
        print(_kv(result))
    elif args.val or args.instruct:
        dataset = args.dataset or (em.config.data.sources[0].path if em.config and em.config.data.sources else None)
        if dataset is None:
            raise EvalError(f"{'--val' if args.val else '--instruct'} needs --dataset DIR (a data_prep output folder)")
        if args.val:
            result = perplexity.dataset_perplexity(em, dataset, stride=args.stride, max_documents=args.max_documents,
                                                   batch_size=args.batch_size)
        else:
            result = instruct.instruction_loss(em, dataset, max_documents=args.max_documents, batch_size=args.batch_size)
        print(_kv({k: v for k, v in result.items() if k != "per_example"}))
    elif args.chain_of_thought:
        template = workdir_template(em) if args.workdir else hf_template(args.hf, em)
        result = instruct.chain_of_thought(em, template, items, max_new_tokens=args.max_new_tokens,
                                           log_samples=args.log_samples)
        print(_kv({k: v for k, v in result.items() if k != "samples"}))
    elif args.suite:
        result = bias.evaluate_suite(em, data_root, sets, limit=args.limit, batch_size=args.batch_size,
                                     system=args.system)
        print(bias.format_table(result))
    else:
        result = harness.evaluate_tasks(em, names, task_files=task_files, shots=args.shots, limit=args.limit,
                                        seed=args.seed, data_root=args.data_root, batch_size=args.batch_size,
                                        contamination=index, log_samples=args.log_samples)
        print(harness.format_table(result))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.output}")
    return 0


def _done(args, result: dict, text: str) -> int:
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.output}")
    return 0


def _kv(result: dict) -> str:
    return "\n".join(f"{k:15s} {v:.6g}" if isinstance(v, float) else f"{k:15s} {v}" for k, v in result.items())


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (EvalError, ConfigError, DataFormatError, InteropError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
