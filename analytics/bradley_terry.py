"""Bradley–Terry ratings by penalised logistic regression, fitted for many bootstrap weightings at
once with a batched Newton method (deterministic, numpy only).

P(a beats b) = σ(β_a − β_b + γ·x), ties count as half a win; ratings are reported on an Elo-like
scale: ``anchor + scale / ln(10) · (β − β_ref)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import numpy as np

from analytics.stats import bootstrap_weights

MAX_STEP = 2.0

Player = TypeVar("Player", bound=Hashable)


def design_matrix(index_a: np.ndarray, index_b: np.ndarray, n_models: int,
                  covariates: np.ndarray | None = None) -> np.ndarray:
    """Rows ``+1`` for the model of side a, ``−1`` for side b, then any covariates.

    >>> design_matrix(np.array([0, 2]), np.array([1, 0]), 3).tolist()
    [[1.0, -1.0, 0.0], [-1.0, 0.0, 1.0]]
    """
    n = len(index_a)
    x = np.zeros((n, n_models))
    x[np.arange(n), index_a] += 1.0
    x[np.arange(n), index_b] -= 1.0
    if covariates is not None:
        x = np.hstack([x, np.asarray(covariates, dtype=float).reshape(n, -1)])
    return x


def fit_logistic(x: np.ndarray, trials: np.ndarray, successes: np.ndarray, *, ridge: float = 1e-3,
                 max_iter: int = 200, tol: float = 1e-9) -> np.ndarray:
    """Maximise Σ successes·log σ(xθ) + (trials − successes)·log(1 − σ(xθ)) − ridge/2·|θ|² for every
    row of ``trials``/``successes`` (``B × n``: one weighting per bootstrap replicate).

    Returns ``B × p`` coefficients. Newton steps are clipped, so separated data (a model that won
    every battle) converges to the finite, penalised optimum.

    >>> x = design_matrix(np.array([0]), np.array([1]), 2)
    >>> theta = fit_logistic(x, np.array([[4.0]]), np.array([[3.0]]), ridge=0.0)
    >>> round(float(theta[0, 0] - theta[0, 1]), 4), round(math.log(3), 4)
    (1.0986, 1.0986)
    """
    trials = np.atleast_2d(np.asarray(trials, dtype=float))
    successes = np.atleast_2d(np.asarray(successes, dtype=float))
    n_batch, p = trials.shape[0], x.shape[1]
    theta = np.zeros((n_batch, p))
    penalty = max(ridge, 1e-10) * np.eye(p)
    active = np.ones(n_batch, dtype=bool)
    outer = (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], p * p)  # Hessian = curvature @ outer
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        eta = theta[idx] @ x.T
        prob = 1.0 / (1.0 + np.exp(-eta))
        grad = (successes[idx] - trials[idx] * prob) @ x - theta[idx] * max(ridge, 1e-10)
        curvature = trials[idx] * prob * (1.0 - prob)
        hessian = (curvature @ outer).reshape(-1, p, p) + penalty
        step = np.linalg.solve(hessian, grad[..., None])[..., 0]
        largest = np.abs(step).max(axis=1)
        step *= np.minimum(1.0, MAX_STEP / np.maximum(largest, 1e-300))[:, None]
        theta[idx] += step
        active[idx] = largest > tol
    return theta


def bradley_terry_strengths(battles: Iterable[tuple[Player, Player, float, float]], *, prior: float = 0.5,
                            ridge: float = 0.0) -> dict[Player, float]:
    """Log-strengths β of the players of ``battles``, each ``(player a, player b, a's wins, b's wins)``.

    Wins are vote weights and may be fractional (a tie is half a win to each side); battles between
    the same two players add up. ``prior`` pseudo-wins and as many pseudo-losses against a virtual
    player of β = 0 pull every player towards it: an unbeaten player stays finite and β has an
    absolute zero (the maximum of the same likelihood that Hunter's MM algorithm climbs). ``ridge``
    adds a Gaussian penalty on β instead of, or on top of, the prior.

    >>> s = bradley_terry_strengths([(1, 2, 3.0, 1.0), (2, 3, 2.0, 0.0)])
    >>> sorted(s, key=s.get, reverse=True)
    [1, 2, 3]
    >>> s = bradley_terry_strengths([("x", "y", 1.5, 0.5)], prior=0.0, ridge=1e-9)
    >>> round(s["x"] - s["y"], 4), round(math.log(3), 4)
    (1.0986, 1.0986)
    >>> bradley_terry_strengths([])
    {}
    """
    index: dict[Player, int] = {}
    totals: dict[tuple[int, int], list[float]] = {}  # one design row per ordered pair of players
    for player_a, player_b, wins_a, wins_b in battles:
        ia, ib = index.setdefault(player_a, len(index)), index.setdefault(player_b, len(index))
        row = totals.setdefault((ia, ib), [0.0, 0.0])
        row[0] += float(wins_a)
        row[1] += float(wins_b)
    if not index:
        return {}
    n = len(index)
    pairs = list(totals)
    x = design_matrix(np.array([a for a, _ in pairs], dtype=int), np.array([b for _, b in pairs], dtype=int), n)
    successes = np.array([totals[pair][0] for pair in pairs])
    trials = successes + np.array([totals[pair][1] for pair in pairs])
    if prior > 0:  # the virtual opponent has β = 0, so its rows only carry the player's own column
        x = np.vstack([x, np.eye(n)])
        successes = np.concatenate([successes, np.full(n, prior)])
        trials = np.concatenate([trials, np.full(n, 2 * prior)])
    theta = fit_logistic(x, trials[None, :], successes[None, :], ridge=ridge)[0]
    return {player: float(theta[i]) for player, i in index.items()}


def to_ratings(beta: np.ndarray, *, scale: float = 400.0, anchor_rating: float = 1000.0,
               anchor_index: int | None = None) -> np.ndarray:
    """Log-strengths to Elo-like ratings, anchored on one model or on the mean.

    >>> to_ratings(np.array([0.0, math.log(10)])).tolist()
    [800.0, 1200.0]
    >>> to_ratings(np.array([0.0, math.log(10)]), anchor_index=0).tolist()
    [1000.0, 1400.0]
    """
    beta = np.asarray(beta, dtype=float)
    ref = beta[..., anchor_index] if anchor_index is not None else beta.mean(axis=-1)
    return anchor_rating + scale / math.log(10) * (beta - np.expand_dims(ref, -1))


def rank_ranges(low: Sequence[float], high: Sequence[float]) -> list[tuple[int, int]]:
    """Best and worst plausible rank of each model from its interval: best = 1 + the number of
    models whose lower bound is above this model's upper bound; worst = N − the number whose upper
    bound is below this model's lower bound (Chatbot Arena's rule).

    >>> rank_ranges([1200, 990, 1000], [1300, 1100, 1050])
    [(1, 1), (2, 3), (2, 3)]
    """
    n = len(low)
    out = []
    for i in range(n):
        better = sum(low[j] > high[i] for j in range(n) if j != i)
        worse = sum(high[j] < low[i] for j in range(n) if j != i)
        out.append((1 + better, n - worse))
    return out


def cluster_weights(clusters: Sequence, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``n_bootstrap × n_battles`` weights from resampling clusters (comparisons) with replacement.

    >>> w = cluster_weights([7, 7, 9], 2, np.random.default_rng(0))
    >>> w.shape, bool((w[:, 0] == w[:, 1]).all())
    ((2, 3), True)
    """
    keys, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    if n_bootstrap == 0 or keys.size == 0:
        return np.zeros((0, len(clusters)))
    return bootstrap_weights(keys.size, n_bootstrap, rng)[:, inverse]
