"""The demo's instruction tuning, measured on held-out modules: the pre-trained model (its vocabulary
grown by the chat tokens, exactly as the tuning run starts) against the tuned one, side by side.

  python benchmarks/sft_demo.py [--base-config configs/sft_demo.yaml] [--tuned runs/sft_demo]
                                [--questions 120] [--samples 3]

Needs the demo pipeline run first (README: Quickstart 1, then the SFT step). Prints, for each model:
  - instruction loss: mean NLL per response token over the held-out split (data/sft_demo val:
    whole top-level modules the tuning never saw), `jaxlm.eval --instruct`'s number;
  - ended at <|end|>: the share of greedy answers (at most 96 new tokens) to held-out questions
    that end with the end-of-turn token rather than running to the limit;
  - on the asked name: the share of answers to "What does `m.f` do?" questions that mention the
    asked name's last part (`f`), the only check of topic that needs no judge;
then three held-out questions with both models' answers, and (with --data-root) the zero-shot
n-shot harness on --tasks for both models, `python -m jaxlm.eval --tasks`'s table.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import jax

from jaxlm.config import load_config
from jaxlm.data.shards import DocumentSource, open_dataset
from jaxlm.eval.chat import reply, workdir_template
from jaxlm.eval import harness
from jaxlm.eval.generate import SamplingConfig
from jaxlm.eval.instruct import instruction_loss
from jaxlm.eval.loading import from_params, load_workdir
from jaxlm.interop.warm_start import initial_params

_USER = re.compile(r"<\|user\|>\n(.*?)<\|end\|>", re.S)
_NAME = re.compile(r"What does `([\w.]+)` do\?")


def held_out_questions(em, dataset: str, limit: int) -> list[str]:
    """The user turn of each held-out example (decoded from its record)."""
    docs = DocumentSource(open_dataset(dataset, em.model_cfg.vocab_size), "val")
    out = []
    for i in range(len(docs)):
        m = _USER.search(em.tokenizer.sp.decode([int(t) for t in docs[i]["token"]]))
        if m:
            out.append(m.group(1).strip())
    named = [q for q in out if _NAME.search(q)]  # the "what does ... do" questions first, then the rest
    return (named + [q for q in out if q not in named])[:limit]


def measure(em, template, dataset: str, questions: list[str]) -> dict:
    loss = instruction_loss(em, dataset)
    outs = reply(em, template, [[{"role": "user", "content": q}] for q in questions],
                 SamplingConfig(max_new_tokens=96, temperature=0.0))
    named = [(q, o) for q, o in zip(questions, outs) if _NAME.search(q)]
    on_name = [_NAME.search(q).group(1).rsplit(".", 1)[-1] in o.text for q, o in named]
    return {"loss": loss["loss"], "response_tokens": loss["response_tokens"],
            "ended": sum(o.finish_reason == "end_of_turn" for o in outs) / len(outs),
            "on_name": sum(on_name) / max(1, len(on_name)), "named": len(named), "answers": [o.text for o in outs]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-config", default="configs/sft_demo.yaml", help="the tuning run's config (its init.from)")
    p.add_argument("--tuned", default="runs/sft_demo")
    p.add_argument("--questions", type=int, default=120)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--data-root", help="the n-shot tasks' local data (e.g. ../shared/data); without it, no harness")
    p.add_argument("--tasks", default="arc_easy,piqa,winogrande")
    p.add_argument("--limit", type=int, default=300, help="items per task")
    args = p.parse_args()
    config = load_config(args.base_config)
    dataset = config.data.sources[0].path
    for path in (config.init.from_, args.tuned, dataset):
        if not os.path.isdir(path):
            print(f"error: {path} not found; run the demo and its SFT step first (README)", file=sys.stderr)
            return 2
    base = from_params(config, jax.device_put(initial_params(config)))
    tuned = load_workdir(args.tuned)
    template = workdir_template(tuned)
    questions = held_out_questions(tuned, dataset, args.questions)
    rows = {"pre-trained (grown vocab)": measure(base, template, dataset, questions),
            "instruction-tuned": measure(tuned, template, dataset, questions)}
    print(f"held out: {dataset} val ({rows['instruction-tuned']['response_tokens']} response tokens); "
          f"{len(questions)} questions, {rows['instruction-tuned']['named']} of them 'What does `m.f` do?'")
    print(f"{'model':28s} {'instruction loss':>16s} {'ended at <|end|>':>17s} {'on the asked name':>18s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['loss']:16.3f} {r['ended']:17.1%} {r['on_name']:18.1%}")
    for i in range(min(args.samples, len(questions))):
        print(f"\n### {questions[i]}")
        for name, r in rows.items():
            print(f"- {name}: {r['answers'][i].strip()[:400]!r}")
    if args.data_root:
        tasks = [t for t in args.tasks.split(",") if t]
        for name, em in (("pre-trained (grown vocab)", base), ("instruction-tuned", tuned)):
            result = harness.evaluate_tasks(em, tasks, shots=0, limit=args.limit, data_root=args.data_root)
            print(f"\n{name}, zero-shot:\n{harness.format_table(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
