"""One table of every bias metric for one or more models, side by side (e.g. before and after a
mitigation), written as markdown and JSON.

  python -m jaxlm.eval.safety_report --model base=runs/demo --model cda=runs/demo_cda \\
      [--data-root DIR] [--sets crows_pairs,bbq] [--limit N] [--system TEXT] --out reports/bias
      [--toxicity-scorer ngram:tox.npz --prompts-per-group 5 --samples 4]

A model is a training workdir (config.yaml) or a transformers folder (config.json). With
--toxicity-scorer the report adds what the models say when they continue prompts: BOLD's sentiment
and toxicity per group (and the spread across groups), continuation toxicity on ToxiGen's prompts and
replies to HH-RLHF's harmless-base questions (jaxlm.eval.generation_safety).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from jaxlm.eval import bias
from jaxlm.eval import generation_safety as gs
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import SamplingConfig
from jaxlm.eval.toxicity import load_scorer
from jaxlm.eval.loading import EvalModel, load_hf_dir, load_workdir
from jaxlm.eval.tasks import default_data_root

# What "no bias" reads as, so a reader of the table knows which way is better.
IDEAL = {"pct_stereotype": "0.5", "pct_pro": "0.5", "bias_score_disambig": "0", "bias_score_ambig": "0",
         "gap": "0", "ll_gap": "0"}


def load_model(path: str) -> EvalModel:
    if os.path.isfile(os.path.join(path, "config.yaml")):
        return load_workdir(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return load_hf_dir(path)
    raise EvalError(f"{path!r} is neither a training workdir (config.yaml) nor a transformers folder (config.json)")


def generation_metrics(em: EvalModel, data_root: str, scorer, per_group: int, samples: int, system: str) -> dict:
    """BOLD, ToxiGen-prompt and HH-RLHF continuation metrics, flattened to the report's rows."""
    sampling = SamplingConfig(max_new_tokens=32, temperature=1.0, top_p=0.9, seed=0)
    bold = gs.evaluate_bold(em, f"{data_root}/bias/bold/prompts", scorer, per_group=per_group, k=samples,
                            sampling=sampling, system=system)
    toxigen = gs.evaluate_prompt_toxicity(em, gs.read_toxigen_prompts(f"{data_root}/bias/toxigen/prompts", per_group),
                                          scorer, k=samples, sampling=sampling, by="kind", system=system)
    hh = gs.evaluate_prompt_toxicity(em, gs.read_hh_prompts(f"{data_root}/pref/hh-rlhf/harmless-base/test.jsonl.gz",
                                                            per_group * 10), scorer, k=samples, sampling=sampling,
                                     system=system)
    out = {f"{k}/{m}": v for k, r in bold["by_group"].items() for m, v in r.items() if isinstance(v, float)}
    out.update({f"spread/{d}/{m}": v for d, r in bold["spread"].items() for m, v in r.items()})
    out.update({m: v for m, v in toxigen.items() if isinstance(v, float)})
    out.update({f"{kind}/{m}": v for kind, r in toxigen["by_kind"].items() for m, v in r.items() if isinstance(v, float)})
    return {"bold": out, "toxigen_prompts": {m: v for m, v in toxigen.items() if isinstance(v, float)},
            "hh_harmless": {m: v for m, v in hh.items() if isinstance(v, float)}}


def markdown(results: dict[str, dict]) -> str:
    names = list(results)
    flat = {name: bias.headline(r) for name, r in results.items()}
    keys = list(dict.fromkeys(k for f in flat.values() for k in f))
    lines = ["| metric | no bias | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key in keys:
        ideal = IDEAL.get(key.rsplit("/", 1)[-1], "")
        cells = [f"{flat[n][key]:.4f}" if key in flat[n] else "" for n in names]
        lines.append(f"| {key} | {ideal} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, dict], out_dir: str, meta: dict) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("# Bias report\n\n")
        f.write("".join(f"- {k}: {v}\n" for k, v in meta.items()) + "\n")
        f.write(markdown(results))
    return md_path, json_path


def _parse_models(specs: Sequence[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise EvalError(f"--model {spec!r} must look like NAME=PATH")
        if name in models:
            raise EvalError(f"--model name {name!r} is given twice")
        models[name] = path
    return models


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxlm.eval.safety_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a workdir or transformers folder")
    p.add_argument("--out", required=True, help="folder for report.md and report.json")
    p.add_argument("--data-root", help="folder holding bias/ and eval/ as ../shared/data does")
    p.add_argument("--sets", default=",".join(bias.SETS))
    p.add_argument("--limit", type=int, help="first N items of each set (BBQ: of each category)")
    p.add_argument("--system", default="", help="text put before every BBQ prompt")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--toxicity-scorer", help="words:FILE, ngram:FILE.npz or hf:DIR[#label]: add generation metrics")
    p.add_argument("--prompts-per-group", type=int, default=5, help="BOLD prompts per group, ToxiGen prompts per file")
    p.add_argument("--samples", type=int, default=4, help="continuations per prompt")
    args = p.parse_args(argv)
    try:
        models = _parse_models(args.model)
        sets = [s.strip() for s in args.sets.split(",") if s.strip()]
        data_root = args.data_root or default_data_root()
        bias.check_data(data_root, sets)
        for path in models.values():  # every path is checked before the first model is scored
            if not os.path.isdir(path):
                raise EvalError(f"model folder {path!r} does not exist")
        scorer = load_scorer(args.toxicity_scorer) if args.toxicity_scorer else None
        results = {}
        for name, path in models.items():
            em = load_model(path)
            results[name] = bias.evaluate_suite(em, data_root, sets, args.limit, args.batch_size, args.system)
            if scorer is not None:
                results[name].update(generation_metrics(em, data_root, scorer, args.prompts_per_group,
                                                        args.samples, args.system))
        meta = {"models": models, "sets": sets, "limit": args.limit, "system": args.system,
                "toxicity_scorer": args.toxicity_scorer, "prompts_per_group": args.prompts_per_group,
                "samples": args.samples}
        md, js = write_report(results, args.out, meta)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(open(md, encoding="utf-8").read())
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
