"""The rankings leaderboard: a Plackett–Luce fit of clinicians' rankings of K replies, per candidate.

Rankings also reach every pairwise figure (agreement, the Bradley–Terry leaderboard, reward pairs,
exports) as the pairs they were expanded into (``db.rankings``). This board reads the rankings
themselves: one ranking is one observation of a whole order, so K replies ranked once weigh as one
ranking here, not as K(K−1)/2 correlated pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlmodel import Session, select

from analytics.plackett_luce import plackett_luce_strengths
from analytics.render import Paragraph, Section, Table
from db.models import Annotator, CandidateModel, Ranking, Response
from db.rules import CLINICIANS, Sources

ELO_SCALE = 400 / math.log(10)  # the leaderboard's points per logit


@dataclass
class RankingRow:
    model: str
    rating: float
    low: float
    high: float
    rankings: int
    first: int


@dataclass
class RankingBoard:
    rows: list[RankingRow] = field(default_factory=list)
    n_rankings: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"n_rankings": self.n_rankings, "rows": [row.__dict__ for row in self.rows]}


def candidate_tiers(order: list[list[int]], model_of: dict[int, str]) -> list[list[str]]:
    """A ranking's tiers of response ids as tiers of candidate names (replies of unknown origin dropped).

    >>> candidate_tiers([[7], [5, 9]], {5: "warm", 7: "terse", 9: "base"})
    [['terse'], ['warm', 'base']]
    """
    tiers = [[model_of[r] for r in tier if r in model_of] for tier in order]
    return [tier for tier in tiers if tier]


def ranking_board(tier_lists: list[list[list[str]]], *, n_bootstrap: int = 200, seed: int = 0,
                  rating_anchor: float = 1000.0) -> RankingBoard:
    """Plackett–Luce ratings (Elo-like points, mean ``rating_anchor``) with bootstrap 95% intervals
    over rankings, how many rankings each model was in, and how often it was ranked first (alone or tied).

    >>> board = ranking_board([[["a"], ["b"], ["c"]]] * 4 + [[["b"], ["a"], ["c"]]], n_bootstrap=0)
    >>> [(r.model, r.rankings, r.first) for r in board.rows]
    [('a', 5, 4), ('b', 5, 1), ('c', 5, 0)]
    """
    board = RankingBoard(n_rankings=len(tier_lists))
    if not tier_lists:
        return board
    fit = plackett_luce_strengths(tier_lists)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in fit}
    for _ in range(n_bootstrap):
        picks = rng.integers(0, len(tier_lists), len(tier_lists))
        again = plackett_luce_strengths([tier_lists[i] for i in picks])
        for model in fit:
            if model in again:
                samples[model].append(again[model])
    for model, strength in sorted(fit.items(), key=lambda kv: -kv[1]):
        draws = samples[model]
        low, high = (np.percentile(draws, [2.5, 97.5]) if len(draws) >= 20 else (math.nan, math.nan))
        board.rows.append(RankingRow(
            model=model, rating=rating_anchor + ELO_SCALE * strength,
            low=rating_anchor + ELO_SCALE * float(low), high=rating_anchor + ELO_SCALE * float(high),
            rankings=sum(any(model in tier for tier in tiers) for tiers in tier_lists),
            first=sum(model in tiers[0] for tiers in tier_lists)))
    return board


def load_ranking_board(*, session: Session, sources: Sources = CLINICIANS, n_bootstrap: int = 200,
                       seed: int = 0) -> RankingBoard:
    """The board over every ranking by annotators of ``sources`` (``db.rules.Sources``)."""
    rankings = session.exec(select(Ranking.order).join(Annotator, Annotator.id == Ranking.annotator_id)
                            .where(sources.condition()).order_by(Ranking.id)).all()
    ids = {r for order in rankings for tier in order for r in tier}
    rows = session.exec(select(Response.id, CandidateModel.name)
                        .join(CandidateModel, CandidateModel.id == Response.candidate_model_id)
                        .where(Response.id.in_(list(ids)))).all() if ids else []
    model_of = {response_id: name for response_id, name in rows}
    return ranking_board([candidate_tiers(order, model_of) for order in rankings],
                         n_bootstrap=n_bootstrap, seed=seed)


def rankings_section(board: RankingBoard, *, title: str = "Rankings (Plackett–Luce)") -> Section:
    """The report's section (every cell is escaped by the renderer)."""
    blocks: list = [Paragraph(
        "Clinicians' rankings of several replies, fitted as whole orders (Plackett–Luce; tied replies share "
        "a place). Ratings are on the leaderboard's Elo-like scale; intervals resample rankings. The same "
        "rankings also appear, expanded into pairs, in the pairwise figures above.")]
    if not board.rows:
        blocks.append(Paragraph("No rankings yet: `therapref pairs --k 3` creates ranking tasks."))
        return Section("rankings", title, blocks)

    def points(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.0f}"

    blocks.append(Table(["model", "rating", "95% CI", "rankings", "ranked first"],
                        [[r.model, points(r.rating), f"{points(r.low)}–{points(r.high)}", str(r.rankings),
                          str(r.first)] for r in board.rows],
                        f"{board.n_rankings} rankings"))
    return Section("rankings", title, blocks)
