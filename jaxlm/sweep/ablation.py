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


def _std(values: list[float]) -> str:
    return f"{statistics.stdev(values):.4f}" if len(values) > 1 else "-"


def ablation_table(results: list[TrialResult], metric: str) -> str:
    """Per switch: mean metric over seeds, and its difference from the baseline of the same seed.

    Seeds change initialisation and data order, which can move a short run's loss more than a
    switch does; pairing each run with its own seed's baseline removes that shared part, so the
    spread of Δ is the noise that matters (the metric's own spread is shown beside it).
    """
    by_group: dict[str, dict] = {}  # group -> {seed: metric}
    failed: dict[str, int] = {}
    params: dict[str, Optional[int]] = {}
    for r in results:
        params[r.group] = params.get(r.group) or r.params
        if r.metric is None:
            failed[r.group] = failed.get(r.group, 0) + 1
        else:
            by_group.setdefault(r.group, {})[r.overrides.get("seed")] = r.metric
    base = by_group.get("baseline", {})
    with_params = any(p is not None for p in params.values())
    header = (["switch", "runs"] + (["params"] if with_params else [])
              + [metric, "Δ vs baseline", "Δ %", "spread of Δ", f"spread of {metric}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = ["baseline"] + [g for g in dict.fromkeys(r.group for r in results) if g != "baseline"]
    for group in order:
        by_seed = by_group.get(group, {})
        size = [format_params(params.get(group))] if with_params else []
        if not by_seed:
            row = [group, f"0 ({failed.get(group, 0)} failed)"] + size + ["-"] * 5
            lines.append("| " + " | ".join(row) + " |")
            continue
        values = list(by_seed.values())
        paired = [seed for seed in by_seed if seed in base]
        diffs = [by_seed[seed] - base[seed] for seed in paired]
        if group == "baseline" or not diffs:
            delta = pct = delta_spread = "-"
        else:
            base_mean = statistics.fmean(base[seed] for seed in paired)
            delta = f"{statistics.fmean(diffs):+.4f}"
            pct = f"{100 * statistics.fmean(diffs) / base_mean:+.2f}%"
            delta_spread = _std(diffs)
        row = [group, str(len(values))] + size + [f"{statistics.fmean(values):.4f}", delta, pct, delta_spread,
                                                  _std(values)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
