"""Plackett–Luce strengths from rankings with ties (Hunter 2004's MM algorithm; numpy only).

A ranking is a list of tiers, best first (``[["m2"], ["m1", "m3"]]``: m2 first, m1 and m3 tied
behind it). Plackett–Luce reads a complete ranking as successive choices: the first is chosen from
all, the second from the rest, and so on, each with probability w_i / Σ_{j left} w_j. Ties are
handled by *splitting the tier*: each member of a tier counts as chosen over everything ranked below
the tier, never over its tie-mates (for a ranking without ties this is exactly Plackett–Luce; a
bottom tier adds nothing). Like ``analytics.bradley_terry``, ``prior`` pseudo-wins and as many
pseudo-losses against a virtual item of strength 1 keep an unbeaten or never-winning item finite.

For K = 2 this is the Bradley–Terry model (a tie adds nothing here, where Bradley–Terry counts it as
half a win each). The leaderboard fits Bradley–Terry on the pairs a ranking expands into
(``db.rankings``); this fit uses the rankings themselves, whose pairs are not independent votes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

Item = TypeVar("Item", bound=Hashable)


def ranking_events(tiers: Sequence[Sequence[Item]]) -> list[tuple[Item, list[Item]]]:
    """The choice events of one ranking: ``(chosen, choice set)``, tiers split (see the module).

    >>> ranking_events([["b"], ["a", "c"], ["d"]])
    [('b', ['b', 'a', 'c', 'd']), ('a', ['a', 'd']), ('c', ['c', 'd'])]
    >>> ranking_events([["x"], ["y", "z"]])
    [('x', ['x', 'y', 'z'])]
    """
    events = []
    for index, tier in enumerate(tiers):
        below = [item for lower in tiers[index + 1:] for item in lower]
        if not below:
            break
        events.extend((item, [item, *below]) for item in tier)
    return events


def plackett_luce_strengths(rankings: Iterable[Sequence[Sequence[Item]]], *, prior: float = 0.5,
                            weights: Iterable[float] | None = None, max_iter: int = 5000,
                            tol: float = 1e-9) -> dict[Item, float]:
    """Log-strengths (mean 0) of the items of ``rankings`` (lists of tiers, best first), by MM.

    ``weights`` gives each ranking a weight (default 1). The MM update (Hunter 2004, eq. 30) is
    w_i ← (wins_i + prior) / (Σ_{events e with i in the set} v_e / Σ_{j in e} w_j + 2·prior / (w_i + 1)),
    which increases the (penalised) likelihood at every step.

    >>> s = plackett_luce_strengths([[["a"], ["b"], ["c"]]] * 3 + [[["b"], ["a"], ["c"]]])
    >>> sorted(s, key=s.get, reverse=True)
    ['a', 'b', 'c']
    >>> s = plackett_luce_strengths([[["x"], ["y"]]] * 3 + [[["y"], ["x"]]], prior=0.0)
    >>> round(s["x"] - s["y"], 4)  # two items: Bradley-Terry, log(3 wins / 1)
    1.0986
    >>> plackett_luce_strengths([])
    {}
    """
    rankings = list(rankings)
    weights = [1.0] * len(rankings) if weights is None else [float(w) for w in weights]
    index: dict[Item, int] = {}
    chosen, members, event_weights = [], [], []
    for tiers, weight in zip(rankings, weights, strict=True):
        for tier in tiers:
            for item in tier:
                index.setdefault(item, len(index))
        for item, choice_set in ranking_events(tiers):
            chosen.append(index[item])
            members.append([index[i] for i in choice_set])
            event_weights.append(weight)
    if not index:
        return {}
    n = len(index)
    wins = np.bincount(np.array(chosen, dtype=int), weights=np.array(event_weights), minlength=n) \
        if chosen else np.zeros(n)
    width = max((len(m) for m in members), default=1)
    padded = np.zeros((len(members), width), dtype=int)
    mask = np.zeros((len(members), width), dtype=bool)
    for row, m in enumerate(members):
        padded[row, :len(m)], mask[row, :len(m)] = m, True
    v = np.array(event_weights, dtype=float)
    w = np.ones(n)
    for _ in range(max_iter):
        totals = (w[padded] * mask).sum(axis=1) if len(members) else np.zeros(0)
        share = np.where(mask, (v / np.maximum(totals, 1e-300))[:, None], 0.0)
        denominator = np.bincount(padded.ravel(), weights=share.ravel(), minlength=n) + 2 * prior / (w + 1)
        new = (wins + prior) / np.maximum(denominator, 1e-300)
        new = np.maximum(new, 1e-300)
        if prior <= 0:
            new /= np.exp(np.log(new).mean())  # no anchor without the prior: fix the scale
        change = np.abs(np.log(new) - np.log(w)).max()
        w = new
        if change < tol:
            break
    beta = np.log(w)
    beta -= beta.mean()
    return {item: float(beta[i]) for item, i in index.items()}


def simulate_rankings(strengths: Mapping[Item, float], *, n: int, k: int, rng: np.random.Generator,
                      tie_rate: float = 0.0) -> list[list[list[Item]]]:
    """``n`` Plackett–Luce rankings of ``k`` items drawn at random, with log-strengths ``strengths``
    (Gumbel trick: sort β + Gumbel noise); each adjacent pair is merged into a tie with probability
    ``tie_rate``. For tests and benchmarks of the fit.

    >>> r = simulate_rankings({"a": 5.0, "b": 0.0, "c": -5.0}, n=2, k=3, rng=np.random.default_rng(0))
    >>> r[0]
    [['a'], ['b'], ['c']]
    """
    items = list(strengths)
    beta = np.array([strengths[i] for i in items], dtype=float)
    out = []
    for _ in range(n):
        pick = rng.choice(len(items), size=k, replace=False)
        noisy = beta[pick] + rng.gumbel(size=k)
        order = [items[i] for i in pick[np.argsort(-noisy)]]
        tiers = [[order[0]]]
        for item in order[1:]:
            if rng.random() < tie_rate:
                tiers[-1].append(item)
            else:
                tiers.append([item])
        out.append(tiers)
    return out
