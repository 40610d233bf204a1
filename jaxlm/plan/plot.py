"""IsoFLOP curves and the compute-optimal frontier of a loss law, with the observed runs, as a PNG."""

from __future__ import annotations

import numpy as np

from jaxlm.plan import PlanError
from jaxlm.plan.fit import Point
from jaxlm.plan.scaling import LossLaw, training_flops


def plot_isoflops(law: LossLaw, points: list[Point], path: str, budgets=None) -> str:
    """Left: predicted loss against N along C = 6ND for several budgets (minimum marked), with the
    observed points. Right: the fitted N_opt(C) and D_opt(C), with the runs' (C, N)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlanError("plotting needs matplotlib: pip install 'matplotlib>=3.8'") from None

    observed_c = np.array([training_flops(p.params, p.tokens) for p in points]) if points else np.array([1e18])
    if budgets is None:
        lo, hi = np.log10(observed_c.min()), np.log10(observed_c.max())
        budgets = np.logspace(np.floor(lo), np.ceil(hi), int(np.ceil(hi) - np.floor(lo)) + 1)
    budgets = np.asarray(budgets, float)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(budgets)))
    for c, color in zip(budgets, colors):
        n_opt = law.params(c)
        n = np.geomspace(n_opt / 30, n_opt * 30, 200)
        left.plot(n, law.loss(n, c / (6 * n)), color=color, label=f"{c:.0e} FLOPs")
        left.plot([n_opt], [law.loss(n_opt, law.tokens(c))], "o", color=color)
    if points:
        left.scatter([p.params for p in points], [p.loss for p in points], c="k", s=12, marker="x",
                     label="runs", zorder=3)
    left.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP curves (fitted law)")
    left.legend(fontsize=7)

    c = np.geomspace(min(budgets.min(), observed_c.min()) / 10, max(budgets.max(), observed_c.max()) * 10, 100)
    right.plot(c, law.params(c), label="N_opt (parameters)")
    right.plot(c, law.tokens(c), label="D_opt (tokens)")
    if points:
        right.scatter(observed_c, [p.params for p in points], c="k", s=12, marker="x", label="runs (N)")
    right.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)",
              title=f"frontier: N ∝ C^{law.a:.3f}, D ∝ C^{law.b:.3f}")
    right.legend(fontsize=7)
    fig.suptitle(f"L(N,D) = {law.E:.3g} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
