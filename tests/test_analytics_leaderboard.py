"""Bradley–Terry: recovers simulated strengths, intervals cover the truth at about the nominal rate,
ties count half, the length-controlled fit removes a pure length advantage, per-topic boards."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from analytics.leaderboard import Battle, battles_from_records, fit_leaderboard, leaderboard_report, win_matrix
from analytics.records import JudgmentRecord

ELO = 400 / math.log(10)


def simulate(strengths: dict[str, float], n: int, rng: np.random.Generator, *, tie_rate: float = 0.0,
             topic: str | None = None, start: int = 0) -> list[Battle]:
    names = list(strengths)
    battles = []
    for k in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        p = 1 / (1 + math.exp(-(strengths[names[i]] - strengths[names[j]])))
        u = rng.random()
        score = 0.5 if u < tie_rate else (1.0 if rng.random() < p else 0.0)
        battles.append(Battle(names[i], names[j], score, topic=topic, cluster=start + k))
    return battles


def test_recovers_known_strengths():
    rng = np.random.default_rng(11)
    truth = {f"model-{i}": s for i, s in enumerate(np.linspace(-1.5, 1.5, 8))}
    board = fit_leaderboard(simulate(truth, 4000, rng), n_bootstrap=50)
    ratings = {r.model: r.rating for r in board.ratings}
    rho = spearmanr([truth[m] for m in truth], [ratings[m] for m in truth]).statistic
    assert rho >= 0.95
    assert np.mean(list(ratings.values())) == pytest.approx(1000)
    # The scale: a logit gap of 3 is 3 * 400 / ln 10 ≈ 521 points (ridge shrinks a little).
    spread = ratings["model-7"] - ratings["model-0"]
    assert 0.85 * 3 * ELO < spread < 1.1 * 3 * ELO
    assert [r.rank for r in board.ratings] == list(range(1, 9))


def test_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate():
    truth = {"m0": -1.0, "m1": -0.3, "m2": 0.0, "m3": 0.4, "m4": 0.9}
    centred = {m: 1000 + ELO * (s - np.mean(list(truth.values()))) for m, s in truth.items()}
    covered = total = 0
    for repeat in range(40):
        rng = np.random.default_rng(1000 + repeat)
        board = fit_leaderboard(simulate(truth, 300, rng), n_bootstrap=200, seed=repeat)
        for r in board.ratings:
            total += 1
            covered += r.ci_low <= centred[r.model] <= r.ci_high
    assert 0.88 <= covered / total <= 0.995, covered / total


def test_ties_count_half_and_win_matrix():
    battles = [Battle("x", "y", 0.5, cluster=i) for i in range(20)]
    board = fit_leaderboard(battles, n_bootstrap=20)
    assert {r.model: round(r.rating, 6) for r in board.ratings} == {"x": 1000.0, "y": 1000.0}
    assert board.ratings[0].ties == 20
    assert board.ratings[0].win_rate == 0.5
    matrix = win_matrix(battles + [Battle("x", "y", 1.0, cluster=99)])
    assert matrix.win_rate[0][1] == pytest.approx(11 / 21)
    assert matrix.battles[0][1] == 21


def test_both_bad_is_a_tie_or_dropped():
    records = [JudgmentRecord(1, "c", "both_bad", model_a="x", model_b="y"),
               JudgmentRecord(2, "c", "a", model_a="x", model_b="y")]
    assert [b.score for b in battles_from_records(records)] == [0.5, 1.0]
    assert [b.score for b in battles_from_records(records, both_bad_as_tie=False)] == [1.0]


def test_anchor_model_and_rank_ranges():
    rng = np.random.default_rng(3)
    truth = {"top": 2.0, "mid-a": 0.0, "mid-b": 0.02, "low": -2.0}
    board = fit_leaderboard(simulate(truth, 1500, rng), n_bootstrap=200, anchor_model="low")
    by = {r.model: r for r in board.ratings}
    assert by["low"].rating == pytest.approx(1000)
    assert (by["top"].rank_best, by["top"].rank_worst) == (1, 1)
    assert (by["low"].rank_best, by["low"].rank_worst) == (4, 4)
    # Two nearly equal models share the rank range 2–3.
    assert (by["mid-a"].rank_best, by["mid-a"].rank_worst) == (2, 3) == (by["mid-b"].rank_best, by["mid-b"].rank_worst)


def test_length_control_removes_a_pure_length_advantage():
    """"verbose" is as good as "plain" but writes long replies, and judges like length."""
    rng = np.random.default_rng(5)
    battles = []
    for k in range(1500):
        pair = [("verbose", int(rng.integers(500, 900))), ("plain", int(rng.integers(100, 300))),
                ("other", int(rng.integers(100, 900)))]
        (ma, la), (mb, lb) = [pair[i] for i in rng.choice(3, 2, replace=False)]
        skill = {"verbose": 0.0, "plain": 0.0, "other": -0.5}
        logit = skill[ma] - skill[mb] + 2.0 * (la - lb) / (la + lb)
        battles.append(Battle(ma, mb, float(rng.random() < 1 / (1 + math.exp(-logit))), la, lb, cluster=k))
    plain = {r.model: r for r in fit_leaderboard(battles, n_bootstrap=100).ratings}
    controlled_board = fit_leaderboard(battles, length_control=True, n_bootstrap=100)
    controlled = {r.model: r for r in controlled_board.ratings}
    assert plain["verbose"].ci_low > plain["plain"].ci_high  # fooled by length
    gap = controlled["verbose"].rating - controlled["plain"].rating
    assert abs(gap) < 40
    assert controlled["verbose"].ci_low < controlled["plain"].ci_high
    assert controlled_board.length_coef.low > 0


def test_report_has_per_topic_boards_and_is_deterministic():
    rng = np.random.default_rng(8)
    truth = {"a": 1.0, "b": 0.0, "c": -1.0}
    battles = simulate(truth, 120, rng, topic="anxiety") + simulate(truth, 10, rng, topic="sleep", start=500)
    records = [JudgmentRecord(b.cluster, "c", {1.0: "a", 0.0: "b", 0.5: "tie"}[b.score], model_a=b.model_a,
                              model_b=b.model_b, topic=b.topic, len_a=100, len_b=120) for b in battles]
    first = leaderboard_report(records, n_bootstrap=50, min_topic_battles=20, seed=4)
    assert list(first.topics) == ["anxiety"]
    assert first.topics["anxiety"].n_battles == 120
    assert first.overall.n_battles == 130
    again = leaderboard_report(records, n_bootstrap=50, min_topic_battles=20, seed=4)
    assert first.as_dict() == again.as_dict()


def test_one_model_gives_no_board():
    board = fit_leaderboard([Battle("x", "x", 1.0)], n_bootstrap=10)
    assert board.ratings == []
    assert "two candidate models" in board.note


def test_batched_newton_matches_scipy_lbfgs():
    from scipy.optimize import minimize

    from analytics.bradley_terry import design_matrix, fit_logistic

    rng = np.random.default_rng(2)
    n, k, ridge = 400, 4, 0.1
    ia = rng.integers(0, k, n)
    ib = (ia + rng.integers(1, k, n)) % k
    length = rng.normal(size=n)
    x = design_matrix(ia, ib, k, length[:, None])
    truth = np.array([0.8, 0.0, -0.3, -0.5, 0.7])
    score = (rng.random(n) < 1 / (1 + np.exp(-x @ truth))).astype(float)
    score[rng.random(n) < 0.1] = 0.5  # ties as half wins

    def loss(theta, w):
        eta = x @ theta
        value = np.sum(w * (np.logaddexp(0, eta) - score * eta)) + ridge / 2 * theta @ theta
        grad = x.T @ (w * (1 / (1 + np.exp(-eta)) - score)) + ridge * theta
        return value, grad

    weights = np.ones((2, n))
    weights[1] = rng.integers(0, 3, n)  # a second, bootstrap-like weighting in the same batch
    ours = fit_logistic(x, weights, weights * score, ridge=ridge)
    for row in range(2):
        expected = minimize(loss, np.zeros(k + 1), args=(weights[row],), jac=True, method="L-BFGS-B",
                            options={"gtol": 1e-10}).x
        np.testing.assert_allclose(ours[row], expected, atol=1e-5)


def test_unknown_anchor_model_falls_back_to_the_mean():
    battles = [Battle("x", "y", 1.0, cluster=i) for i in range(5)] + [Battle("x", "y", 0.0, cluster=9)]
    board = fit_leaderboard(battles, n_bootstrap=10, anchor_model="missing")
    assert "'missing' has no battles" in board.note
    assert np.mean([r.rating for r in board.ratings]) == pytest.approx(1000)


def _mm_strengths(battles: list[tuple[int, int, float, float]], prior: float) -> dict[int, float]:
    """Hunter's MM algorithm for Bradley–Terry with ``prior`` wins and losses against a virtual player
    of strength 1 (the algorithm exports used before it shared ``bradley_terry_strengths``), run to
    convergence as an independent reference."""
    wins: dict[tuple[int, int], float] = {}
    for a, b, wins_a, wins_b in battles:
        wins[(a, b)] = wins.get((a, b), 0.0) + wins_a
        wins[(b, a)] = wins.get((b, a), 0.0) + wins_b
    players = sorted({p for pair in wins for p in pair})
    strength = dict.fromkeys(players, 1.0)
    for _ in range(100_000):
        new = {}
        for i in players:
            won = prior + sum(w for (x, _), w in wins.items() if x == i)
            games = 2 * prior / (strength[i] + 1.0) + sum(
                w / (strength[x] + strength[y]) for (x, y), w in wins.items() if i in (x, y))
            new[i] = won / games
        done = all(abs(new[i] - strength[i]) < 1e-13 * max(strength[i], 1.0) for i in players)
        strength = new
        if done:
            break
    return {i: math.log(s) for i, s in strength.items()}


def test_bradley_terry_strengths_match_the_mm_algorithm_with_a_prior():
    from analytics.bradley_terry import bradley_terry_strengths

    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(2, 6))
        battles = []
        for _ in range(int(rng.integers(1, 8))):
            a, b = (int(v) for v in rng.choice(n, 2, replace=False))
            ties = int(rng.integers(0, 3))
            battles.append((a, b, int(rng.integers(0, 5)) + ties / 2, int(rng.integers(0, 5)) + ties / 2))
        expected = _mm_strengths(battles, prior=0.5)
        ours = bradley_terry_strengths(battles, prior=0.5)
        assert ours.keys() == expected.keys()
        for player, value in expected.items():
            assert ours[player] == pytest.approx(value, abs=1e-6)
