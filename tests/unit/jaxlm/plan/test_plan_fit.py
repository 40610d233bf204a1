"""Fitting L(N, D) to runs: recovery of known constants, reading workdirs, the IsoFLOP plot, the CLI."""

import json
import os

import numpy as np
import pytest

from jaxlm.plan import PlanError
from jaxlm.plan.__main__ import main
from jaxlm.plan.fit import Point, fit_law, load_runs
from jaxlm.plan.scaling import LAWS, LossLaw

TRUE = LAWS["epoch"]


def synthetic_points(law: LossLaw, noise: float = 1e-3, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    points = []
    for n in np.geomspace(1e7, 1e10, 6):
        for d in np.geomspace(1e8, 1e12, 6):
            loss = law.loss(n, d) * np.exp(rng.normal(0, noise))
            points.append(Point(f"n{n:.0f}-d{d:.0f}", float(n), float(d), float(loss)))
    return points


def test_fit_recovers_known_constants_within_5_percent():
    result = fit_law(synthetic_points(TRUE))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(result.law, name) == pytest.approx(getattr(TRUE, name), rel=0.05), name
    # and so the recommendation for a budget
    assert result.law.params(1e22) == pytest.approx(TRUE.params(1e22), rel=0.05)


def test_fit_of_a_different_law_is_not_the_first_one():
    # guards against a fit that returns its starting point or a fixed answer
    other = LossLaw("other", E=1.5, A=300.0, B=900.0, alpha=0.3, beta=0.33)
    result = fit_law(synthetic_points(other, noise=0.0))
    assert result.law.alpha == pytest.approx(0.3, rel=0.02) and result.law.B == pytest.approx(900.0, rel=0.05)


def test_bootstrap_gives_intervals():
    result = fit_law(synthetic_points(TRUE, noise=3e-3), bootstrap=8, starts=8)
    assert result.bootstrap.shape == (8, 5)
    lo, hi = result.interval("alpha")
    assert lo <= hi and result.std("alpha") > 0
    lo, hi = result.optimal_params_interval(1e21)
    assert lo <= hi


def test_too_few_points():
    with pytest.raises(PlanError, match="at least 5"):
        fit_law(synthetic_points(TRUE)[:3])


@pytest.mark.parametrize("name,loss", [("flat", lambda i, n, d: 3.0),  # nothing to explain
                                       ("rising", lambda i, n, d: 2.0 + 0.1 * i)])  # worse with scale
def test_runs_that_do_not_pin_the_law_are_refused(name, loss):
    sizes = [(1e7, 1e8), (1e7, 1e9), (1e8, 1e8), (1e8, 1e9), (1e9, 1e9), (1e9, 1e10)]
    points = [Point(f"r{i}", n, d, loss(i, n, d)) for i, (n, d) in enumerate(sizes)]
    with pytest.raises(PlanError, match="the fit is degenerate .* do not pin the law down"):
        fit_law(points, starts=8)


def write_run(root, name, params, curve):
    """A workdir as jaxlm.main writes it: run.json and metrics.jsonl (val_loss at eval steps)."""
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump({"model_params": params, "devices": 8}, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step, (tokens, loss) in enumerate(curve, 1):
            row = {"step": step, "loss": loss + 0.05, "tokens_seen": tokens, "lr": 1e-3}
            if step % 2 == 0:
                row["val_loss"] = loss
            f.write(json.dumps(row) + "\n")
    return workdir


def test_load_runs_final_and_all(tmp_path):
    w = write_run(tmp_path, "a", 1e6, [(1e6, 5.0), (2e6, 4.0), (3e6, 3.5), (4e6, 3.2)])
    (final,) = load_runs([w])
    assert (final.params, final.tokens, final.loss) == (1e6, 4e6, 3.2)
    assert [p.loss for p in load_runs([w], "all")] == [4.0, 3.2]
    assert [p.loss for p in load_runs([w], "all", metric="loss")] == [5.05, 4.05, 3.55, 3.25]


def test_bad_runs_give_clear_errors(tmp_path):
    w = write_run(tmp_path, "a", 1e6, [(1e6, 5.0), (2e6, 4.0)])
    with open(os.path.join(w, "metrics.jsonl"), "a") as f:
        f.write("{not json\n")
    with pytest.raises(PlanError, match="metrics.jsonl:3 is not valid JSON"):
        load_runs([w])
    w2 = write_run(tmp_path, "b", 1e6, [(1e6, 5.0), (2e6, 4.0)])
    with open(os.path.join(w2, "run.json"), "w") as f:
        json.dump({"devices": 8}, f)
    with pytest.raises(PlanError, match="model_params"):
        load_runs([w2])
    with pytest.raises(PlanError, match="does not exist"):
        load_runs([str(tmp_path / "missing")])


def test_fit_cli_end_to_end(tmp_path, capsys):
    runs = []
    for n in np.geomspace(1e7, 1e10, 4):
        for d in np.geomspace(1e8, 1e12, 4):
            curve = [(d / 2, TRUE.loss(n, d / 2)), (d, TRUE.loss(n, d))]
            runs.append(write_run(tmp_path, f"n{n:.0f}-d{d:.0f}", float(n), curve))
    png = tmp_path / "isoflop.png"
    assert main(["fit", *runs, "--budget", "1e21", "--bootstrap", "4", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "fitted on 16 points from 16 runs" in out and "for C = 1e+21 FLOPs" in out
    alpha_row = next(line for line in out.splitlines() if line.startswith("| alpha"))
    assert float(alpha_row.split("|")[2]) == pytest.approx(TRUE.alpha, rel=0.02)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_fit_recovers_the_papers_approach_3_constants_on_chinchillas_grid():
    """jaxlm's Huber fit of L(N, D) on losses from Chinchilla's published approach-3 law (E 1.69,
    A 406.4, B 410.7, alpha 0.34, beta 0.28), at the sizes the paper trained (70M-16B parameters,
    5B-500B tokens), gives those constants back."""
    paper = LossLaw("Hoffmann et al. 2022, approach 3", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    rng = np.random.default_rng(3)
    points = [Point(f"n{n:.0f}-d{d:.0f}", float(n), float(d), float(paper.loss(n, d) * np.exp(rng.normal(0, 1e-3))))
              for n in np.geomspace(7e7, 1.6e10, 7) for d in np.geomspace(5e9, 5e11, 6)]
    result = fit_law(points)
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(result.law, name) == pytest.approx(getattr(paper, name), rel=0.05), name
    assert result.law.params(5.76e23) == pytest.approx(paper.params(5.76e23), rel=0.05)
