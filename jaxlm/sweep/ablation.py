"""Ablations: named switches (override lists) run against the unchanged baseline.

SWITCHES maps a name to the overrides that flip one component; each pair (tied/untied,
dropout/no_dropout, ...) serves baselines with the component off or on. `model.family` is one key
for four components: positions (RoPE -> learned), the MLP (SwiGLU -> GELU), the norm
(RMSNorm -> LayerNorm) and biases. It keeps `model.d_ff` and `model.n_kv_heads`, so with an explicit
d_ff the GELU MLP has 2/3 of SwiGLU's weights: compare the params column too.
"""

from __future__ import annotations

import statistics
from typing import Optional

from jaxlm.sweep.report import format_params
from jaxlm.sweep.runner import Trial, TrialResult
from jaxlm.sweep.space import SweepError, parse_value

SWITCHES: dict[str, list[str]] = {
    # llama baseline -> gpt2: learned positions, GELU MLP, LayerNorm, biases (one key today)
    "gpt2_block": ["model.family=gpt2"],
    "llama_block": ["model.family=llama"],  # the reverse, for a gpt2 baseline
    "dropout": ["model.embed_dropout=0.1", "model.attn_dropout=0.1", "model.resid_dropout=0.1"],
    "no_dropout": ["model.embed_dropout=0.0", "model.attn_dropout=0.0", "model.resid_dropout=0.0"],
    "untied": ["model.tie_embeddings=false"],
    "tied": ["model.tie_embeddings=true"],
    "qk_norm": ["model.qk_norm=true"],
    "no_qk_norm": ["model.qk_norm=false"],
    "no_weight_decay": ["optim.weight_decay=0.0"],
}


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SweepError(f"switch override {item!r} must look like key.path=value")
        out[key.strip()] = parse_value(value)
    return out


def parse_switches(names: list[str], custom: list[str]) -> dict[str, dict]:
    """--ablate NAME (from SWITCHES) and --switch NAME:key=value[;key=value] (your own)."""
    switches = {}
    for name in names:
        if name not in SWITCHES:
            raise SweepError(f"unknown ablation switch {name!r}; known: {', '.join(SWITCHES)} "
                             "(or define one with --switch NAME:key=value)")
        switches[name] = _overrides(SWITCHES[name])
    for item in custom:
        name, sep, rest = item.partition(":")
        if not sep or not name.strip():
            raise SweepError(f"--switch {item!r} must look like NAME:key=value[;key=value]")
        switches[name.strip()] = _overrides([p for p in rest.split(";") if p.strip()])
    if not switches:
        raise SweepError(f"ablation needs at least one switch: --ablate NAME ({', '.join(SWITCHES)})")
    return switches


def ablation_trials(switches: dict[str, dict], seeds: list[Optional[int]]) -> list[Trial]:
    """The baseline and every switch, once per seed (seed None: the config's own)."""
    trials = []
    for seed in seeds:
        suffix = "" if seed is None else f"-seed{seed}"
        seed_override = {} if seed is None else {"seed": seed}
        trials.append(Trial(f"baseline{suffix}", dict(seed_override), "baseline"))
        for name, overrides in switches.items():
            trials.append(Trial(f"{name}{suffix}", {**overrides, **seed_override}, name))
    return trials


def ablation_table(results: list[TrialResult], metric: str) -> str:
    """Per switch: mean metric over seeds and its difference from the baseline."""
    groups: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    params: dict[str, Optional[int]] = {}
    for r in results:
        params[r.group] = params.get(r.group) or r.params
        if r.metric is None:
            failed[r.group] = failed.get(r.group, 0) + 1
        else:
            groups.setdefault(r.group, []).append(r.metric)
    base = groups.get("baseline")
    base_mean = statistics.fmean(base) if base else None
    with_params = any(p is not None for p in params.values())
    lines = [f"| switch | runs |{' params |' if with_params else ''} {metric} | Δ vs baseline | Δ % "
             "| spread over seeds |", "|---|---|" + ("---|" if with_params else "") + "---|---|---|---|"]
    order = ["baseline"] + [g for g in dict.fromkeys(r.group for r in results) if g != "baseline"]
    for group in order:
        values = groups.get(group, [])
        size = f" {format_params(params.get(group))} |" if with_params else ""
        if not values:
            lines.append(f"| {group} | 0 ({failed.get(group, 0)} failed) |{size} - | - | - | - |")
            continue
        mean = statistics.fmean(values)
        spread = f"{statistics.stdev(values):.4f}" if len(values) > 1 else "-"
        if base_mean is None or group == "baseline":
            delta = pct = "-"
        else:
            delta, pct = f"{mean - base_mean:+.4f}", f"{100 * (mean - base_mean) / base_mean:+.2f}%"
        lines.append(f"| {group} | {len(values)} |{size} {mean:.4f} | {delta} | {pct} | {spread} |")
    return "\n".join(lines)
