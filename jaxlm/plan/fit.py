"""Fit the parametric law L(N, D) = E + A/N^alpha + B/D^beta to your own runs, as Chinchilla did.

The objective is the Huber loss (delta 1e-3) between log L_pred and log L_observed, where
log L_pred = LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e. It is minimised
with L-BFGS from the best points of a grid of starting values (the objective is not convex and
has many poor local minima). Uncertainty comes from a bootstrap over the runs.

Runs are workdirs of `python -m jaxlm.main`: `run.json` holds `"model_params"`, `metrics.jsonl`
one JSON object per logged step with cumulative `tokens_seen` and `loss`, and `val_loss` at eval steps.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from typing import Optional

import numpy as np
from scipy.optimize import minimize

from jaxlm.plan import PlanError
from jaxlm.plan.scaling import LossLaw

HUBER_DELTA = 1e-3
# Chinchilla's grid of initialisations: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}.
GRID = dict(a=np.arange(0, 26, 5.0), b=np.arange(0, 26, 5.0), e=np.arange(-1, 1.01, 0.5),
            alpha=np.arange(0, 2.01, 0.5), beta=np.arange(0, 2.01, 0.5))


@dataclasses.dataclass(frozen=True)
class Point:
    run: str
    params: float  # N
    tokens: float  # D
    loss: float


# ----------------------------------------------------------------------------------------------
# Reading runs


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlanError(f"{path}:{i} is not valid JSON ({e.msg}); fix or delete that line") from None
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_run(workdir: str, which: str = "final", metric: str = "val_loss") -> list[Point]:
    """Loss points of one run: its last `metric` value ("final") or every logged one ("all").

    Points along one run's curve are biased by its learning-rate schedule (the loss at step k of a
    long cosine run is above that of a run that ends at k); Chinchilla fitted final losses.
    """
    run_json = os.path.join(workdir, "run.json")
    metrics = os.path.join(workdir, "metrics.jsonl")
    for path in (run_json, metrics):
        if not os.path.isfile(path):
            raise PlanError(f"{path} does not exist; pass workdirs written by `python -m jaxlm.main`")
    try:
        with open(run_json, encoding="utf-8") as f:
            params = json.load(f).get("model_params")
    except (json.JSONDecodeError, AttributeError):
        raise PlanError(f"{run_json} is not a JSON object; it should hold \"model_params\"") from None
    if not _finite(params) or params <= 0:
        raise PlanError(f"{run_json} has no positive \"model_params\" (got {params!r})")
    points = []
    for row in _read_jsonl(metrics):
        loss, tokens = row.get(metric), row.get("tokens_seen")
        if _finite(loss) and loss > 0 and _finite(tokens) and tokens > 0:
            points.append(Point(workdir, float(params), float(tokens), float(loss)))
    if not points:
        raise PlanError(f"{metrics} has no line with both a positive {metric!r} and cumulative \"tokens_seen\"")
    points.sort(key=lambda p: p.tokens)
    return points[-1:] if which == "final" else points


def load_runs(workdirs: list[str], which: str = "final", metric: str = "val_loss") -> list[Point]:
    if which not in ("final", "all"):
        raise PlanError(f"points must be 'final' or 'all', got {which!r}")
    return [p for w in workdirs for p in load_run(w, which, metric)]


# ----------------------------------------------------------------------------------------------
# The fit


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Huber(LSE(a - alpha log N, b - beta log D, e) - log L) summed, and its gradient.

    theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    x = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, points)
    m = x.max(axis=0)
    w = np.exp(x - m)
    s = w.sum(axis=0)
    r = m + np.log(s) - log_l
    w /= s  # d LSE / d x
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum()
    dr = np.clip(r, -delta, delta)  # d huber / d r
    grad = np.array([
        (dr * w[0]).sum(), (dr * w[1]).sum(), (dr * w[2]).sum(),
        -(dr * w[0] * log_n).sum(), -(dr * w[1] * log_d).sum(),
    ])
    return float(value), grad


def _grid_starts(log_n, log_d, log_l, delta, keep: int) -> list[np.ndarray]:
    starts = np.array(list(itertools.product(*(GRID[k] for k in ("a", "b", "e", "alpha", "beta")))))
    a, b, e, alpha, beta = (starts[:, i:i + 1] for i in range(5))
    x = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, a.shape[:1] + log_n.shape)])
    r = np.logaddexp.reduce(x, axis=0) - log_l
    huber = np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)
    return list(starts[np.argsort(huber)[:keep]])


def _minimise(starts, log_n, log_d, log_l, delta) -> tuple[np.ndarray, float]:
    best, best_value = None, math.inf
    for start in starts:
        res = minimize(_objective, start, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B",
                       options=dict(maxiter=2000, ftol=1e-15, gtol=1e-12))
        if res.fun < best_value:
            best, best_value = res.x, float(res.fun)
    return best, best_value


def _law(theta: np.ndarray, label: str) -> LossLaw:
    a, b, e, alpha, beta = theta
    return LossLaw(label, E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


@dataclasses.dataclass(frozen=True)
class FitResult:
    law: LossLaw
    objective: float
    points: int
    runs: int
    bootstrap: Optional[np.ndarray] = None  # (samples, 5): E, A, B, alpha, beta

    CONSTANTS = ("E", "A", "B", "alpha", "beta")

    def interval(self, name: str, level: float = 0.9) -> Optional[tuple[float, float]]:
        if self.bootstrap is None or len(self.bootstrap) < 2:
            return None
        column = self.bootstrap[:, self.CONSTANTS.index(name)]
        lo, hi = np.quantile(column, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def std(self, name: str) -> Optional[float]:
        if self.bootstrap is None or len(self.bootstrap) < 2:
            return None
        return float(np.std(self.bootstrap[:, self.CONSTANTS.index(name)], ddof=1))

    def optimal_params_interval(self, flops: float, level: float = 0.9) -> Optional[tuple[float, float]]:
        if self.bootstrap is None or len(self.bootstrap) < 2:
            return None
        values = [LossLaw("", *row).params(flops) for row in self.bootstrap]
        lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)


def fit_law(points: list[Point], *, delta: float = HUBER_DELTA, starts: int = 32, bootstrap: int = 0,
            seed: int = 0, label: str = "fitted to your runs") -> FitResult:
    """Fits E, A, B, alpha, beta; with `bootstrap` > 0 also refits on runs resampled with replacement."""
    runs = sorted({p.run for p in points})
    if len(points) < 5:
        raise PlanError(f"a five-constant law needs at least 5 loss points, got {len(points)}; "
                        "train more runs (several sizes N, each for several token counts D)")
    if len({p.params for p in points}) < 2 or len({p.tokens for p in points}) < 2:
        raise PlanError("the runs must differ in both model size and token count to separate "
                        "A/N^alpha from B/D^beta")
    log_n, log_d, log_l = (np.log([getattr(p, k) for p in points]) for k in ("params", "tokens", "loss"))
    theta, value = _minimise(_grid_starts(log_n, log_d, log_l, delta, starts), log_n, log_d, log_l, delta)
    samples = None
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        by_run = {r: [i for i, p in enumerate(points) if p.run == r] for r in runs}
        rows = []
        for _ in range(bootstrap):
            pick = rng.choice(len(runs), size=len(runs), replace=True)
            idx = np.array([i for k in pick for i in by_run[runs[k]]])
            if len(np.unique(log_n[idx])) < 2 or len(np.unique(log_d[idx])) < 2:
                continue
            t, _ = _minimise([theta], log_n[idx], log_d[idx], log_l[idx], delta)
            if np.all(np.isfinite(t)) and np.max(t[:3]) < 700:  # exp() of a wild refit overflows
                law = _law(t, "")
                rows.append([law.E, law.A, law.B, law.alpha, law.beta])
        samples = np.array(rows)
    _check_not_degenerate(theta)
    return FitResult(_law(theta, label), value, len(points), len(runs), samples)


def _check_not_degenerate(theta: np.ndarray) -> None:
    """Refuses fits that put the loss floor at ~0 or the exponents far outside any published law:
    the points did not constrain the law (e.g. sizes that differ only by an ablation switch)."""
    a, b, e, alpha, beta = theta
    if not (np.all(np.isfinite(theta)) and max(a, b, e) < 700 and math.exp(e) > 1e-3
            and 0 < alpha < 2 and 0 < beta < 2):
        raise PlanError(
            f"the fit is degenerate (E={math.exp(min(e, 700)):.3g}, alpha={alpha:.3g}, beta={beta:.3g}): "
            "these runs do not pin the law down. Use runs of at least three model sizes, each trained "
            "to several token counts, with the same recipe otherwise.")
