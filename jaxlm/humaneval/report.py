"""A round's ratings summed up: win rate per system and per pair with 95% Wilson intervals,
Bradley-Terry ratings on the Elo scale, agreement between raters on the items they share, and
each rater's habits (position bias, ties, time per item). Rendered as text for `tally` and as a
dict for JSON and the results page."""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from jaxlm.humaneval import tally

OUTCOMES = ("first", "second", "tie", "both_bad")  # relative to the item's fixed system order
TIE_RULES = {"half": "a tie or 'both bad' counts half a win to each system",
             "drop": "ties and 'both bad' are left out of win rates"}


@dataclasses.dataclass(frozen=True)
class Rating:
    rater: str
    item: int
    first: str  # the item's two systems in their fixed order (not the order on screen)
    second: str
    outcome: str  # one of OUTCOMES
    left_chosen: Optional[bool]  # the rater picked the response shown on the left (None: tie/both bad)
    seconds: float  # from showing the item to the rating


@dataclasses.dataclass
class Score:
    name: str  # a system, or "A vs B" for a pair
    n: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float
    low: float
    high: float
    rating: Optional[float] = None  # Bradley-Terry, Elo scale


@dataclasses.dataclass
class RaterRow:
    name: str
    n: int
    left_share: float  # of decisive choices, the share that went to the left response
    tie_share: float
    both_bad_share: float
    median_seconds: float


@dataclasses.dataclass
class Report:
    ties_as: str
    n_ratings: int
    systems: list[Score]
    pairs: list[Score]
    bt_note: Optional[str]
    cohen: list[tuple[str, str, int, Optional[float]]]  # rater, rater, shared items, kappa
    fleiss: Optional[tuple[int, int, Optional[float]]]  # items, raters, kappa
    raters: list[RaterRow]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tie_rule"] = TIE_RULES[self.ties_as]
        return _finite(d)


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _score(name: str, wins: int, losses: int, ties: int, both_bad: int, ties_as: str) -> Score:
    rate, n = tally.win_rate(wins, losses, ties + both_bad, ties_as)
    low, high = tally.wilson(rate, n) if n else (math.nan, math.nan)
    return Score(name, wins + losses + ties + both_bad, wins, losses, ties, both_bad, rate, low, high)


def _bradley_terry(systems: Sequence[str], ratings: Sequence[Rating]):
    index = {s: i for i, s in enumerate(systems)}
    wins = np.zeros((len(systems), len(systems)))
    for r in ratings:
        i, j = index[r.first], index[r.second]
        if r.outcome == "first":
            wins[i, j] += 1
        elif r.outcome == "second":
            wins[j, i] += 1
        else:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
    note = None
    if not tally.strongly_connected(wins):
        wins = wins + 0.5 * (1 - np.eye(len(systems)))
        note = ("some system never won or never lost, so one virtual tie per pair of systems was added "
                "to keep the ratings finite")
    return tally.elo_scale(tally.bradley_terry(wins)), note


def _agreement(ratings: Sequence[Rating]):
    by_item: dict[int, dict[str, str]] = defaultdict(dict)
    for r in ratings:
        by_item[r.item][r.rater] = r.outcome
    raters = sorted({r.rater for r in ratings})
    cohen = []
    for a, b in itertools.combinations(raters, 2):
        common = [labels for labels in by_item.values() if a in labels and b in labels]
        if common:
            kappa = tally.cohen_kappa([c[a] for c in common], [c[b] for c in common])
            cohen.append((a, b, len(common), kappa))
    shared = [labels for labels in by_item.values() if len(labels) >= 2]
    fleiss = None
    if shared:
        table = [[sum(v == o for v in labels.values()) for o in OUTCOMES] for labels in shared]
        n_raters = len({name for labels in shared for name in labels})
        fleiss = (len(shared), n_raters, tally.fleiss_kappa(table))
    return cohen, fleiss


def _rater_rows(ratings: Sequence[Rating]) -> list[RaterRow]:
    rows = []
    for name in sorted({r.rater for r in ratings}):
        mine = [r for r in ratings if r.rater == name]
        decisive = [r.left_chosen for r in mine if r.left_chosen is not None]
        rows.append(RaterRow(
            name, len(mine), sum(decisive) / len(decisive) if decisive else math.nan,
            sum(r.outcome == "tie" for r in mine) / len(mine),
            sum(r.outcome == "both_bad" for r in mine) / len(mine),
            statistics.median(r.seconds for r in mine)))
    return rows


def summarize(systems: Sequence[str], ratings: Sequence[Rating], ties_as: str = "half") -> Report:
    """The report of `ratings` over `systems` (every system of the round, rated or not)."""
    if ties_as not in TIE_RULES:
        raise ValueError(f"ties must be one of {sorted(TIE_RULES)}, got {ties_as!r}")
    per_system = {s: [0, 0, 0, 0] for s in systems}  # wins, losses, ties, both bad
    per_pair: dict[tuple[str, str], list[int]] = {}
    for r in ratings:
        a, b = sorted((r.first, r.second), key=list(systems).index)
        counts = per_pair.setdefault((a, b), [0, 0, 0, 0])
        if r.outcome in ("tie", "both_bad"):
            slot = 2 if r.outcome == "tie" else 3
            for c in (per_system[a], per_system[b], counts):
                c[slot] += 1
            continue
        winner = r.first if r.outcome == "first" else r.second
        loser = r.second if winner == r.first else r.first
        per_system[winner][0] += 1
        per_system[loser][1] += 1
        counts[0 if winner == a else 1] += 1
    scores = [_score(s, *per_system[s], ties_as) for s in systems]
    pairs = [_score(f"{a} vs {b}", *per_pair[(a, b)], ties_as) for a, b in sorted(per_pair, key=lambda p: (
        list(systems).index(p[0]), list(systems).index(p[1])))]
    note = None
    if ratings and len(systems) >= 2:
        elo, note = _bradley_terry(systems, ratings)
        for score, value in zip(scores, elo):
            score.rating = float(value)
    cohen, fleiss = _agreement(ratings)
    return Report(ties_as, len(ratings), scores, pairs, note, cohen, fleiss, _rater_rows(ratings))


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _kappa(x: Optional[float]) -> str:
    return "undefined (one label throughout)" if x is None else f"{x:.3f}"


def format_text(report: Report) -> str:
    lines = [f"{report.n_ratings} ratings; {TIE_RULES[report.ties_as]}; intervals are 95% Wilson", ""]
    head = f"{'system':24s} {'n':>5s} {'wins':>5s} {'losses':>6s} {'ties':>5s} {'both bad':>8s} {'win rate':>9s}  95% interval     BT (Elo)"
    lines.append(head)
    for s in report.systems:
        bt = "-" if s.rating is None else f"{s.rating:8.1f}"
        lines.append(f"{s.name[:24]:24s} {s.n:5d} {s.wins:5d} {s.losses:6d} {s.ties:5d} {s.both_bad:8d} "
                     f"{_pct(s.win_rate):>9s}  {_pct(s.low):>6s}-{_pct(s.high):<7s}  {bt:>8s}")
    if report.bt_note:
        lines.append(f"note: {report.bt_note}")
    if len(report.pairs) > 1:
        lines += ["", "pairs (win rate of the first system)"]
        for p in report.pairs:
            lines.append(f"{p.name[:40]:40s} {p.n:5d}  {_pct(p.win_rate):>7s}  {_pct(p.low)}-{_pct(p.high)}")
    lines += ["", "agreement on items rated by more than one rater"]
    if not report.cohen:
        lines.append("no item has two ratings yet")
    for a, b, n, k in report.cohen:
        lines.append(f"Cohen's kappa  {a} / {b}: {_kappa(k)} over {n} items")
    if report.fleiss:
        n, m, k = report.fleiss
        lines.append(f"Fleiss' kappa  {m} raters: {_kappa(k)} over {n} items")
    lines += ["", f"{'rater':24s} {'ratings':>7s} {'chose left':>10s} {'ties':>6s} {'both bad':>8s} {'median s':>8s}"]
    for r in report.raters:
        lines.append(f"{r.name[:24]:24s} {r.n:7d} {_pct(r.left_share):>10s} {_pct(r.tie_share):>6s} "
                     f"{_pct(r.both_bad_share):>8s} {r.median_seconds:8.1f}")
    return "\n".join(lines)


def from_rows(rows: Sequence[dict]) -> list[Rating]:
    """Ratings as the store exports them (see store.Store.ratings) in the form `summarize` takes."""
    out = []
    for r in rows:
        if r["winner"] is not None:
            outcome = "first" if r["winner"] == r["first_system"] else "second"
        else:
            outcome = r["choice"]
        left_chosen = {"left": True, "right": False}.get(r["choice"])
        out.append(Rating(r["rater"], r["item"], r["first_system"], r["second_system"], outcome, left_chosen,
                          r["seconds"]))
    return out
