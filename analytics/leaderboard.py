"""The candidate-model leaderboard: Bradley–Terry ratings with bootstrap intervals and rank ranges,
a length-controlled variant, the win-rate matrix, and per-topic boards."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from analytics.bradley_terry import cluster_weights, design_matrix, fit_logistic, rank_ranges, to_ratings
from analytics.records import JudgmentRecord
from analytics.stats import Estimate, percentile_interval

BOOTSTRAP_CHUNK = 100


@dataclass(frozen=True)
class Battle:
    """One judgment as a game between the candidate models behind replies a and b.

    ``score`` is 1 when a won, 0 when b won, 0.5 for a tie.
    """

    model_a: str
    model_b: str
    score: float
    len_a: int = 0
    len_b: int = 0
    topic: str | None = None
    cluster: int = 0


def battles_from_records(records: Sequence[JudgmentRecord], *, both_bad_as_tie: bool = True) -> list[Battle]:
    """Judgments between two different candidate models, as battles.

    >>> recs = [JudgmentRecord(1, "x", "a", model_a="m1", model_b="m2"),
    ...         JudgmentRecord(2, "x", "both_bad", model_a="m1", model_b="m2"),
    ...         JudgmentRecord(3, "x", "a", model_a="m1", model_b="m1")]
    >>> [b.score for b in battles_from_records(recs)], len(battles_from_records(recs, both_bad_as_tie=False))
    ([1.0, 0.5], 1)
    """
    scores = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5 if both_bad_as_tie else None}
    out = []
    for r in records:
        score = scores[r.preferred]
        if score is None or r.model_a == r.model_b:
            continue
        out.append(Battle(r.model_a, r.model_b, score, r.len_a, r.len_b, r.topic, r.comparison_id))
    return out


@dataclass
class Rating:
    model: str
    rating: float
    ci_low: float
    ci_high: float
    rank: int
    rank_best: int
    rank_worst: int
    battles: int
    wins: int
    ties: int
    losses: int

    @property
    def win_rate(self) -> float:
        """Share of points won (a tie is half a point)."""
        return (self.wins + 0.5 * self.ties) / self.battles if self.battles else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "win_rate": self.win_rate}


@dataclass
class Leaderboard:
    ratings: list[Rating] = field(default_factory=list)
    n_battles: int = 0
    length_controlled: bool = False
    length_coef: Estimate | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return {"ratings": [r.as_dict() for r in self.ratings], "n_battles": self.n_battles,
                "length_controlled": self.length_controlled, "note": self.note,
                "length_coef": self.length_coef.as_dict() if self.length_coef else None}


def normalized_length_difference(len_a: np.ndarray, len_b: np.ndarray) -> np.ndarray:
    """(len_a − len_b) / (len_a + len_b), 0 when both are empty (Chatbot Arena's style feature).

    >>> normalized_length_difference(np.array([30, 0]), np.array([10, 0])).tolist()
    [0.5, 0.0]
    """
    total = (len_a + len_b).astype(float)
    return np.divide(len_a - len_b, total, out=np.zeros_like(total), where=total > 0)


def fit_leaderboard(
    battles: Sequence[Battle], *, length_control: bool = False, n_bootstrap: int = 500,
    confidence: float = 0.95, seed: int = 0, scale: float = 400.0, anchor_rating: float = 1000.0,
    anchor_model: str | None = None, ridge: float = 0.1,
) -> Leaderboard:
    """Bradley–Terry ratings; the bootstrap resamples comparisons (``Battle.cluster``)."""
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    if len(models) < 2:
        return Leaderboard(n_battles=len(battles), length_controlled=length_control,
                           note="needs judgments between at least two candidate models")
    index = {m: i for i, m in enumerate(models)}
    ia = np.array([index[b.model_a] for b in battles])
    ib = np.array([index[b.model_b] for b in battles])
    score = np.array([b.score for b in battles])
    k = len(models)
    if length_control:
        diff = normalized_length_difference(np.array([b.len_a for b in battles]), np.array([b.len_b for b in battles]))
        sd = diff.std()
        covariate = diff / sd if sd > 1e-9 else diff
        x, membership = design_matrix(ia, ib, k, covariate[:, None]), None
    else:  # one row per ordered pair of models: the fit's cost does not grow with the votes
        pairs, membership = np.unique(ia * k + ib, return_inverse=True)
        x = design_matrix(pairs // k, pairs % k, k)

    def fit(weights: np.ndarray) -> np.ndarray:
        trials, successes = weights, weights * score
        if membership is not None:
            one_hot = np.zeros((len(battles), x.shape[0]))
            one_hot[np.arange(len(battles)), membership] = 1.0
            trials, successes = trials @ one_hot, successes @ one_hot
        return fit_logistic(x, trials, successes, ridge=ridge)

    anchor_index = index.get(anchor_model) if anchor_model else None
    note = ""
    if anchor_model and anchor_index is None:
        note = f"anchor model {anchor_model!r} has no battles here, so the mean rating is the anchor"
    theta = fit(np.ones((1, len(battles))))[0]
    rating = to_ratings(theta[:k], scale=scale, anchor_rating=anchor_rating, anchor_index=anchor_index)
    rng = np.random.default_rng(seed)
    replicates = []
    for start in range(0, n_bootstrap, BOOTSTRAP_CHUNK):
        weights = cluster_weights([b.cluster for b in battles], min(BOOTSTRAP_CHUNK, n_bootstrap - start), rng)
        replicates.append(fit(weights))
    boot = np.vstack(replicates) if replicates else np.zeros((0, x.shape[1]))
    boot_ratings = to_ratings(boot[:, :k], scale=scale, anchor_rating=anchor_rating, anchor_index=anchor_index)
    intervals = [percentile_interval(boot_ratings[:, i], confidence) for i in range(k)]
    if not replicates:
        intervals = [(float(r), float(r)) for r in rating]
    ranges = rank_ranges([lo for lo, _ in intervals], [hi for _, hi in intervals])
    order = np.argsort(-rating, kind="stable")
    tallies = _tallies(battles, models)
    ratings = []
    for rank, i in enumerate(order, start=1):
        wins, ties, losses = tallies[models[i]]
        ratings.append(Rating(models[i], float(rating[i]), intervals[i][0], intervals[i][1], rank,
                              ranges[i][0], ranges[i][1], wins + ties + losses, wins, ties, losses))
    coef = None
    if length_control:
        low, high = percentile_interval(boot[:, k], confidence) if len(boot) else (math.nan, math.nan)
        coef = Estimate(float(theta[k]), low, high, len(battles))
    return Leaderboard(ratings, len(battles), length_control, coef, note)


def _tallies(battles: Sequence[Battle], models: Sequence[str]) -> dict[str, list[int]]:
    tallies = {m: [0, 0, 0] for m in models}
    for b in battles:
        outcome_a = 0 if b.score == 1 else (2 if b.score == 0 else 1)
        tallies[b.model_a][outcome_a] += 1
        tallies[b.model_b][2 - outcome_a] += 1
    return tallies


@dataclass
class WinMatrix:
    models: list[str]
    win_rate: list[list[float | None]]
    battles: list[list[int]]

    def as_dict(self) -> dict:
        return asdict(self)


def win_matrix(battles: Sequence[Battle], models: Sequence[str] | None = None) -> WinMatrix:
    """Row model's share of points against the column model (ties half), with battle counts.

    >>> m = win_matrix([Battle("x", "y", 1.0), Battle("y", "x", 0.5)])
    >>> m.win_rate, m.battles
    ([[None, 0.75], [0.25, None]], [[0, 2], [2, 0]])
    """
    models = list(models or sorted({b.model_a for b in battles} | {b.model_b for b in battles}))
    index = {m: i for i, m in enumerate(models)}
    points = np.zeros((len(models), len(models)))
    counts = np.zeros((len(models), len(models)), dtype=int)
    for b in battles:
        i, j = index[b.model_a], index[b.model_b]
        points[i, j] += b.score
        points[j, i] += 1 - b.score
        counts[i, j] += 1
        counts[j, i] += 1
    rates = [[float(points[i, j] / counts[i, j]) if counts[i, j] else None for j in range(len(models))]
             for i in range(len(models))]
    return WinMatrix(models, rates, counts.tolist())


@dataclass
class LeaderboardReport:
    overall: Leaderboard
    length_controlled: Leaderboard
    matrix: WinMatrix
    topics: dict[str, Leaderboard] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"overall": self.overall.as_dict(), "length_controlled": self.length_controlled.as_dict(),
                "win_matrix": self.matrix.as_dict(), "topics": {t: b.as_dict() for t, b in self.topics.items()}}


def leaderboard_report(
    records: Sequence[JudgmentRecord], *, n_bootstrap: int = 500, confidence: float = 0.95, seed: int = 0,
    scale: float = 400.0, anchor_rating: float = 1000.0, anchor_model: str | None = None, ridge: float = 0.1,
    both_bad_as_tie: bool = True, min_topic_battles: int = 20,
) -> LeaderboardReport:
    """Overall and length-controlled boards, the win-rate matrix and one board per topic with
    at least ``min_topic_battles`` battles between two or more models."""
    battles = battles_from_records(records, both_bad_as_tie=both_bad_as_tie)
    common = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed, scale=scale,
                  anchor_rating=anchor_rating, anchor_model=anchor_model, ridge=ridge)
    overall = fit_leaderboard(battles, **common)
    controlled = fit_leaderboard(battles, length_control=True, **common)
    topics = {}
    by_topic: dict[str, list[Battle]] = {}
    for b in battles:
        if b.topic:
            by_topic.setdefault(b.topic, []).append(b)
    one_topic_for_all = len(by_topic) == 1 and sum(len(g) for g in by_topic.values()) == len(battles)
    if not one_topic_for_all:  # a board identical to the overall one says nothing new
        for topic in sorted(by_topic):
            group = by_topic[topic]
            if len(group) >= min_topic_battles and len({b.model_a for b in group} | {b.model_b for b in group}) > 1:
                topics[topic] = fit_leaderboard(group, **{**common, "n_bootstrap": min(n_bootstrap, 200)})
    return LeaderboardReport(overall, controlled, win_matrix(battles), topics)
