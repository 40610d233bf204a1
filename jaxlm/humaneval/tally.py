"""The statistics of a rating round, as pure functions of plain counts: win rate and its Wilson
interval, Bradley-Terry strengths (Hunter's MM algorithm) on the Elo scale, and agreement between
raters (Cohen's kappa for two, Fleiss' kappa for more).

Ties: a tie counts half a win to each side (`ties="half"`), or is left out of the comparison
(`ties="drop"`). Bradley-Terry always counts a tie as half a win each way.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Optional, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def win_rate(wins: float, losses: float, ties: float, ties_as: str = "half") -> tuple[float, float]:
    """(score, n): the share of comparisons won and how many comparisons it is out of."""
    if ties_as == "half":
        n = wins + losses + ties
        score = wins + 0.5 * ties
    elif ties_as == "drop":
        n = wins + losses
        score = wins
    else:
        raise ValueError(f"ties_as must be 'half' or 'drop', got {ties_as!r}")
    return (score / n if n else math.nan), n


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed over n trials (n may be fractional)."""
    if n <= 0:
        return math.nan, math.nan
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> Optional[float]:
    """Cohen's kappa of two raters' labels on the same items; None when chance agreement is total
    (both raters used one and the same label throughout)."""
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(counts) -> Optional[float]:
    """Fleiss' kappa of an (items, categories) table of how many raters put each item in each
    category. Items may have different numbers of raters (each at least two): an item's agreement
    is over its own rater pairs and category shares pool all ratings; with a constant number of
    raters this is Fleiss' original statistic. None when chance agreement is total."""
    table = np.asarray(counts, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError("fleiss_kappa needs an (items, categories) table with at least one item")
    per_item = table.sum(axis=1)
    if np.any(per_item < 2):
        raise ValueError("every item needs at least two ratings for Fleiss' kappa")
    agreement = ((table * (table - 1)).sum(axis=1) / (per_item * (per_item - 1))).mean()
    shares = table.sum(axis=0) / table.sum()
    chance = float((shares ** 2).sum())
    if chance >= 1:
        return None
    return float((agreement - chance) / (1 - chance))


def strongly_connected(wins) -> bool:
    """Whether every system beat, directly or through others, every other one: the condition under
    which the Bradley-Terry maximum-likelihood strengths exist and are finite."""
    w = np.asarray(wins) > 0
    k = w.shape[0]
    reach = w | np.eye(k, dtype=bool)
    for m in range(k):  # transitive closure (Floyd-Warshall on booleans)
        reach |= reach[:, m:m + 1] & reach[m:m + 1, :]
    return bool(reach.all())


def bradley_terry(wins, tol: float = 1e-12, max_iter: int = 100_000) -> np.ndarray:
    """Maximum-likelihood Bradley-Terry strengths p (geometric mean 1), P(i beats j) = p_i / (p_i + p_j),
    from a (K, K) matrix wins[i, j] = times i beat j (ties entered as 0.5 each way). Hunter's
    minorize-maximize update p_i <- W_i / sum_j n_ij / (p_i + p_j). Raises ValueError when the
    fit does not exist (see strongly_connected)."""
    w = np.asarray(wins, dtype=np.float64)
    k = w.shape[0]
    if w.shape != (k, k) or k < 2:
        raise ValueError("bradley_terry needs a square (K, K) wins matrix with K >= 2")
    if not strongly_connected(w):
        raise ValueError("some system never beat (or never lost to) the rest, so Bradley-Terry strengths "
                         "are unbounded; add a prior or collect more ratings")
    games = w + w.T
    total_wins = w.sum(axis=1)
    p = np.ones(k)
    for _ in range(max_iter):
        new = total_wins / (games / (p[:, None] + p[None, :])).sum(axis=1)
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(new - p)) < tol:
            return new
        p = new
    return p


def elo_scale(strengths: np.ndarray, base: float = 1000.0) -> np.ndarray:
    """Bradley-Terry strengths as Elo-style ratings: a 400-point gap is 10:1 odds."""
    return base + 400.0 * np.log10(np.asarray(strengths))
