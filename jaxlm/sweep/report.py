"""Sweep results as a markdown table, TensorBoard HParams, and the best config as YAML."""

from __future__ import annotations

import json
import os
from typing import Optional

import yaml

from jaxlm.sweep.runner import TrialResult
from jaxlm.sweep.space import SweepError, format_value, parse_value, set_path


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_params(n: Optional[int]) -> str:
    """1311872 -> '1.31M'."""
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def ranked(results: list[TrialResult]) -> list[TrialResult]:
    """Finished trials by metric (lowest first), then the others in their order."""
    ok = sorted((r for r in results if r.metric is not None), key=lambda r: r.metric)
    return ok + [r for r in results if r.metric is None]


def markdown_table(results: list[TrialResult], metric: str) -> str:
    keys = []
    for r in results:
        keys += [k for k in r.overrides if k not in keys]
    with_params = any(r.params is not None for r in results)
    header = (["rank", "trial"] + keys + (["params"] if with_params else [])
              + [metric, "train loss", "status", "seconds", "load"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(ranked(results), 1):
        values = [format_value(r.overrides[k]) if k in r.overrides else "" for k in keys]
        if with_params:
            values.append(format_params(r.params))
        rank = str(i) if r.metric is not None else "-"
        load = "-" if r.load is None else f"{r.load:.1f}"
        lines.append("| " + " | ".join([rank, r.name] + values + [_fmt(r.metric), _fmt(r.loss), r.status,
                                                                  f"{r.seconds:.0f}", load]) + " |")
    return "\n".join(lines)


def _hparam_value(v):
    return v if isinstance(v, (bool, int, float, str)) else format_value(v)


def write_hparams(results: list[TrialResult], logdir: str, metric: str) -> None:
    """One HParams run per trial, readable in TensorBoard's HPARAMS tab."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(logdir) as writer:
        for r in results:
            if r.metric is None:
                continue
            hparams = {k: _hparam_value(v) for k, v in r.overrides.items()}
            if r.group:
                hparams["switch"] = r.group
            metrics = {f"hparam/{metric}": r.metric}
            if r.loss is not None:
                metrics["hparam/train_loss"] = r.loss
            writer.add_hparams(hparams, metrics, name=r.name)


def best_config(base_config: str, extra: list[str], result: TrialResult) -> dict:
    """The base config with the sweep-wide and the best trial's overrides applied."""

    with open(base_config, encoding="utf-8") as f:
        tree = yaml.safe_load(f) or {}
    if not isinstance(tree, dict):
        raise SweepError(f"{base_config} is not a YAML mapping of config keys")
    for item in extra:
        key, _, value = item.partition("=")
        set_path(tree, key, parse_value(value))
    for key, value in result.overrides.items():
        set_path(tree, key, value)
    return tree


def write_report(results: list[TrialResult], sweep_dir: str, base_config: str, extra: list[str],
                 metric: str, title: str = "sweep") -> Optional[TrialResult]:
    """results.md, results.jsonl, tb/ (HParams) and best.yaml in the sweep directory."""
    os.makedirs(sweep_dir, exist_ok=True)
    with open(os.path.join(sweep_dir, "results.jsonl"), "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.to_json()) + "\n")
    with open(os.path.join(sweep_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# {title}\n\nbase config: `{base_config}`; for every trial: "
                f"`{' '.join(extra) or '(nothing)'}`\n\n{markdown_table(results, metric)}\n")
    write_hparams(results, os.path.join(sweep_dir, "tb"), metric)
    ok = ranked(results)
    best = ok[0] if ok and ok[0].metric is not None else None
    if best is not None:
        with open(os.path.join(sweep_dir, "best.yaml"), "w", encoding="utf-8") as f:
            f.write(f"# best of {len(results)} trials: {best.name}, {metric} {best.metric:.4f}\n")
            yaml.safe_dump(best_config(base_config, extra, best), f, sort_keys=False)
    return best
