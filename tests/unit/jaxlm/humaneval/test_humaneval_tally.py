"""The statistics of a rating round on hand-made ratings: win rate (ties as half), Wilson interval,
Cohen's and Fleiss' kappa against worked examples computed by hand, Bradley-Terry against closed
forms and an independent maximum-likelihood fit, and the report that puts them together."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import minimize

from jaxlm.humaneval import tally
from jaxlm.humaneval.report import Rating, format_text, summarize


def test_win_rate_counts_ties_as_stated():
    assert tally.win_rate(6, 2, 2, "half") == (0.7, 10)  # (6 + 2/2) / 10
    assert tally.win_rate(6, 2, 2, "drop") == (0.75, 8)  # 6 / (6 + 2)
    assert math.isnan(tally.win_rate(0, 0, 3, "drop")[0])
    with pytest.raises(ValueError, match="half"):
        tally.win_rate(1, 1, 1, "third")


def test_wilson_interval_by_hand():
    # 7 of 10, z = 1.959964 (z^2 = 3.841459): centre (0.7 + z^2/20) / (1 + z^2/10) = 0.892073 / 1.384146
    # = 0.64449; half-width z sqrt(0.21/10 + z^2/400) / (1 + z^2/10) = 0.34287 / 1.38415 = 0.24772:
    # [0.3968, 0.8922] to the four places hand arithmetic and printed tables give
    z = tally.Z95
    low, high = tally.wilson(0.7, 10)
    assert (low, high) == pytest.approx((0.3968, 0.8922), abs=5e-5)
    # the same bounds are the roots of (p_hat - p)^2 = z^2 p (1 - p) / n
    roots = np.sort(np.roots([1 + z * z / 10, -(2 * 0.7 + z * z / 10), 0.49]))
    assert (low, high) == pytest.approx(tuple(roots), abs=1e-12)
    # no successes: the lower bound is 0 and the upper z^2 / (n + z^2)
    assert tally.wilson(0.0, 10) == pytest.approx((0.0, z * z / (10 + z * z)), abs=1e-12)
    assert all(math.isnan(x) for x in tally.wilson(0.5, 0))


def test_cohen_kappa_worked_example():
    # 50 items, yes/no: both yes 20, A yes B no 5, A no B yes 10, both no 15.
    # p_o = 35/50 = 0.7; A says yes 25/50, B 30/50: p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert tally.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert tally.cohen_kappa(a, a) == 1.0
    assert tally.cohen_kappa(["t"] * 4, ["t"] * 4) is None  # chance agreement is total
    # systematic disagreement on two labels: p_o = 0, p_e = 0.5, kappa = -1
    assert tally.cohen_kappa(["x", "y"] * 3, ["y", "x"] * 3) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        tally.cohen_kappa(["x"], ["x", "y"])


def test_fleiss_kappa_worked_example():
    # Fleiss' classic table: 10 items, 14 raters each, 5 categories.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    # by hand, in exact fractions: P_i = sum n_ij (n_ij - 1) / (14 * 13); p_j = column sum / 140
    p_bar = sum(Fraction(sum(x * (x - 1) for x in row), 14 * 13) for row in table) / 10
    p_e = sum(Fraction(sum(row[j] for row in table), 140) ** 2 for j in range(5))
    assert (p_bar, p_e) == (Fraction(172, 455), Fraction(417, 1960))  # 0.378 and 0.213
    expected = (p_bar - p_e) / (1 - p_e)
    assert expected == Fraction(4211, 20059)  # 0.2099
    assert tally.fleiss_kappa(table) == pytest.approx(float(expected), abs=1e-12)


def test_fleiss_with_two_raters_is_scotts_pi_and_allows_unequal_counts():
    # the Cohen example as a two-rater table: Fleiss reduces to Scott's pi, pooling both raters'
    # shares: yes (25 + 30) / 100 = 0.55, p_e = 0.55^2 + 0.45^2 = 0.505, pi = (0.7 - 0.505) / 0.495
    table = [[2, 0]] * 20 + [[1, 1]] * 15 + [[0, 2]] * 15
    assert tally.fleiss_kappa(table) == pytest.approx((0.7 - 0.505) / 0.495, abs=1e-12)
    # items with 2 and 3 ratings: agreement per item over its own pairs, shares over all 5 ratings
    # item 1 (2 of 2 agree): 1; item 2 (2 "a", 1 "b" of 3): (2*1 + 0) / (3*2) = 1/3; mean 2/3
    # shares: a 4/5, b 1/5: p_e = 17/25; kappa = (2/3 - 17/25) / (8/25) = -1/24
    assert tally.fleiss_kappa([[2, 0], [2, 1]]) == pytest.approx(-1 / 24, abs=1e-12)
    assert tally.fleiss_kappa([[3, 0], [2, 0]]) is None
    with pytest.raises(ValueError, match="at least two"):
        tally.fleiss_kappa([[1, 0], [2, 0]])


def test_bradley_terry_two_systems_closed_form():
    # two systems: the MLE odds are the win ratio, 7:3
    p = tally.bradley_terry([[0, 7], [3, 0]])
    assert p[0] / p[1] == pytest.approx(7 / 3, rel=1e-10)
    assert p[0] * p[1] == pytest.approx(1.0, rel=1e-12)  # geometric mean 1
    elo = tally.elo_scale(p)
    assert elo[0] - elo[1] == pytest.approx(400 * math.log10(7 / 3), rel=1e-9)
    assert (elo[0] + elo[1]) / 2 == pytest.approx(1000.0)


def test_bradley_terry_three_systems_known_fit():
    # strengths 4 : 2 : 1 and results exactly as expected under them (4-2 over 6 games,
    # 4-1 over 5, 2-1 over 3) satisfy the likelihood equations, so the fit is 4 : 2 : 1 exactly
    wins = [[0, 4, 4], [2, 0, 2], [1, 1, 0]]
    p = tally.bradley_terry(wins)
    assert p == pytest.approx(np.array([2.0, 1.0, 0.5]), rel=1e-9)


def test_bradley_terry_matches_an_independent_likelihood_fit():
    wins = np.array([[0, 5, 3, 6], [4, 0, 2.5, 3], [1, 3.5, 0, 4], [2, 1, 2, 0]])
    p = tally.bradley_terry(wins)

    def nll(theta):  # log-strengths, the last pinned by the geometric-mean-1 constraint
        t = np.append(theta, -theta.sum())
        return -sum(wins[i, j] * (t[i] - np.logaddexp(t[i], t[j])) for i in range(4) for j in range(4) if i != j)

    fit = minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10})
    expected = np.exp(np.append(fit.x, -fit.x.sum()))
    assert p == pytest.approx(expected, rel=1e-5)
    # and the MM fixed point satisfies the likelihood equations W_i = sum_j n_ij p_i / (p_i + p_j)
    games = wins + wins.T
    assert (games * p[:, None] / (p[:, None] + p[None, :])).sum(axis=1) == pytest.approx(wins.sum(axis=1), rel=1e-9)


def test_bradley_terry_refuses_an_unbounded_fit():
    assert not tally.strongly_connected([[0, 3], [0, 0]])  # system 1 never won
    with pytest.raises(ValueError, match="unbounded"):
        tally.bradley_terry([[0, 3], [0, 0]])
    assert tally.strongly_connected([[0, 1, 0], [0, 0, 1], [1, 0, 0]])  # a cycle connects all


def _r(rater, item, first, second, outcome, left=None, seconds=1.0):
    return Rating(rater, item, first, second, outcome, left, seconds)


def test_report_on_hand_made_ratings():
    ratings = [
        _r("ana", 1, "x", "y", "first", True), _r("ben", 1, "x", "y", "first", False),
        _r("ana", 2, "x", "y", "second", True), _r("ben", 2, "x", "y", "first", True),
        _r("ana", 3, "x", "y", "tie"), _r("ben", 3, "x", "y", "tie"),
        _r("ana", 4, "x", "y", "both_bad", seconds=3.0), _r("ben", 5, "x", "y", "first", True, seconds=5.0),
    ]
    report = summarize(["x", "y"], ratings)
    x, y = report.systems
    assert (x.n, x.wins, x.losses, x.ties, x.both_bad) == (8, 4, 1, 2, 1)
    assert x.win_rate == pytest.approx((4 + 0.5 * 3) / 8)  # tie and both bad count half
    assert y.win_rate == pytest.approx((1 + 0.5 * 3) / 8)
    assert (x.low, x.high) == pytest.approx(tally.wilson(5.5 / 8, 8))
    dropped = summarize(["x", "y"], ratings, ties_as="drop").systems[0]
    assert dropped.win_rate == pytest.approx(4 / 5) and dropped.n == 8
    # items 1-3 are rated by both: labels ana (first, second, tie), ben (first, first, tie)
    # p_o = 2/3; p_e = (1*2 + 1*0 + 1*1) / 9 = 1/3; kappa = (1/3) / (2/3) = 0.5
    (a, b, n, kappa), = report.cohen
    assert (a, b, n) == ("ana", "ben", 3) and kappa == pytest.approx(0.5)
    assert report.fleiss[:2] == (3, 2)
    ana, ben = report.raters
    assert (ana.n, ana.left_share, ana.tie_share, ana.both_bad_share) == (4, 1.0, 0.25, 0.25)
    assert ana.median_seconds == 1.0 and ben.left_share == pytest.approx(2 / 3)
    assert "Cohen's kappa  ana / ben: 0.500 over 3 items" in format_text(report)


def test_report_three_systems_bradley_terry_and_pairs():
    # pairs dealt as in the 4:2:1 fit above, ties entered as half a win each way
    ratings = ([_r("r", i, "a", "b", "first") for i in range(4)] + [_r("r", 10 + i, "a", "b", "second") for i in range(2)]
               + [_r("r", 20 + i, "a", "c", "first") for i in range(4)] + [_r("r", 30, "a", "c", "second")]
               + [_r("r", 40 + i, "b", "c", "first") for i in range(1)] + [_r("r", 50 + i, "b", "c", "tie") for i in range(2)])
    report = summarize(["a", "b", "c"], ratings)
    ratings_elo = [s.rating for s in report.systems]
    assert ratings_elo == pytest.approx(list(tally.elo_scale(np.array([2.0, 1.0, 0.5]))), rel=1e-9)
    assert [p.name for p in report.pairs] == ["a vs b", "a vs c", "b vs c"]
    assert report.pairs[2].win_rate == pytest.approx(2 / 3)  # 1 win + 2 ties of 3
    assert report.bt_note is None


def test_report_adds_a_prior_when_a_system_never_wins():
    report = summarize(["a", "b"], [_r("r", i, "a", "b", "first") for i in range(3)])
    # one virtual tie: a has 3.5 wins, b 0.5: odds 7
    a, b = report.systems
    assert a.rating - b.rating == pytest.approx(400 * math.log10(7), rel=1e-9)
    assert "virtual tie" in report.bt_note
    empty = summarize(["a", "b"], [])
    assert empty.systems[0].n == 0 and empty.systems[0].rating is None and empty.cohen == []
    assert empty.to_dict()["systems"][0]["win_rate"] is None  # NaN never reaches JSON
