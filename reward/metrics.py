"""Honest evaluation numbers for a reward model: pure functions over scores and pairs."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from db.rules import longer_side
from reward.pairs import PreferencePair


def sigmoid(x: float) -> float:
    """
    >>> sigmoid(0.0)
    0.5
    """
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion.

    >>> [round(x, 3) for x in wilson_interval(60, 100)]
    [0.502, 0.691]
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def reliability_bins(diffs: Sequence[float], n_bins: int = 10) -> list[dict[str, float]]:
    """Bins of confidence max(p, 1−p), p = sigmoid(r_chosen − r_rejected), with the share correct.

    >>> [b["count"] for b in reliability_bins([3.0, -3.0, 0.1], n_bins=5)]
    [1, 0, 0, 0, 2]
    """
    bins = [{"lower": 0.5 + 0.5 * i / n_bins, "upper": 0.5 + 0.5 * (i + 1) / n_bins, "count": 0,
             "confidence": 0.0, "accuracy": 0.0} for i in range(n_bins)]
    for d in diffs:
        p = sigmoid(d)
        confidence = max(p, 1 - p)
        index = min(int((confidence - 0.5) / 0.5 * n_bins), n_bins - 1)
        b = bins[index]
        b["count"] += 1
        b["confidence"] += confidence
        b["accuracy"] += 1.0 if d > 0 else (0.5 if d == 0 else 0.0)
    for b in bins:
        if b["count"]:
            b["confidence"] /= b["count"]
            b["accuracy"] /= b["count"]
    return bins


def expected_calibration_error(diffs: Sequence[float], n_bins: int = 10) -> float:
    """ECE of sigmoid(r_chosen − r_rejected): mean |accuracy − confidence| weighted by bin size.

    >>> expected_calibration_error([0.0, 0.0])
    0.0
    >>> round(expected_calibration_error([10.0, -10.0]), 3)
    0.5
    """
    n = len(diffs)
    if n == 0:
        return 0.0
    return sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(diffs, n_bins))


def _accuracy(diffs: Sequence[float]) -> float:
    return sum(1.0 if d > 0 else (0.5 if d == 0 else 0.0) for d in diffs) / len(diffs) if diffs else float("nan")


def baseline_verdict(accuracy: float, ci: Sequence[float], length_baseline: float) -> str:
    """One sentence, for a clinician lead, on whether the model beats the trivial length rules.

    The better trivial rule on a file is "the longer reply wins" or its reverse, whichever scores
    higher there (``max(b, 1 - b)``); a model that does not clear it has learnt nothing a ruler
    could not tell. "Beats" needs the whole 95% interval above the rule, not just the point.

    >>> baseline_verdict(0.644, [0.578, 0.704], 0.534)
    'Beats the length rule on this file: 0.644 (95% CI 0.578-0.704) against 0.534 for "the longer reply wins".'
    >>> baseline_verdict(0.557, [0.50, 0.61], 0.711)
    'Worse than the length rule on this file: 0.557 (95% CI 0.500-0.610) against 0.711 for "the longer reply \
wins". Do not use this model to rank replies like these.'
    >>> baseline_verdict(0.60, [0.52, 0.68], 0.40)
    'No clear gain over the length rule on this file: 0.600 (95% CI 0.520-0.680) against 0.600 for "the \
shorter reply wins".'
    """
    rule, value = ("the longer reply wins", length_baseline) if length_baseline >= 0.5 \
        else ("the shorter reply wins", 1.0 - length_baseline)
    low, high = ci
    figures = f'{accuracy:.3f} (95% CI {low:.3f}-{high:.3f}) against {value:.3f} for "{rule}"'
    if low > value:
        return f"Beats the length rule on this file: {figures}."
    if high < value:
        return (f"Worse than the length rule on this file: {figures}. "
                "Do not use this model to rank replies like these.")
    return f"No clear gain over the length rule on this file: {figures}."


def evaluation_report(pairs: Sequence[PreferencePair], chosen: Sequence[float], rejected: Sequence[float],
                      *, n_bins: int = 10) -> dict[str, Any]:
    """Accuracy with a 95% CI next to the length baseline, shorter-wins accuracy, per-source accuracy, ECE.

    Lengths are in words (``db.rules.reply_length``, the unit `therapref report` uses too); equal lengths
    and equal scores count as half right.

    >>> ps = [PreferencePair((), "a long reply here", "short", "p1"), PreferencePair((), "ok", "a long one", "p2")]
    >>> r = evaluation_report(ps, [1.0, 0.2], [0.0, 0.5])
    >>> r["n_pairs"], r["accuracy"], r["length_baseline"], r["shorter_wins_accuracy"], r["n_shorter_wins"]
    (2, 0.5, 0.5, 0.0, 1)
    """
    diffs = [c - r for c, r in zip(chosen, rejected, strict=True)]
    n = len(diffs)
    correct = sum(1 for d in diffs if d > 0) + 0.5 * sum(1 for d in diffs if d == 0)
    # The chosen reply is side "a": the baseline is right when the chosen one is the longer.
    longer_sides = [longer_side(p.chosen, p.rejected) for p in pairs]
    longer_right = sum(1.0 if side == "a" else (0.5 if side == "tie" else 0.0) for side in longer_sides)
    shorter = [d for d, side in zip(diffs, longer_sides, strict=True) if side == "b"]
    longer = [d for d, side in zip(diffs, longer_sides, strict=True) if side == "a"]
    by_source: dict[str, list[float]] = defaultdict(list)
    for pair, d in zip(pairs, diffs, strict=True):
        by_source[pair.source].append(d)
    low, high = wilson_interval(round(correct), n)
    return {
        "n_pairs": n,
        "n_prompts": len({p.prompt_key for p in pairs}),
        "accuracy": correct / n if n else float("nan"),
        "accuracy_ci": [low, high],
        "length_baseline": longer_right / n if n else float("nan"),
        "shorter_wins_accuracy": _accuracy(shorter),
        "n_shorter_wins": len(shorter),
        "longer_wins_accuracy": _accuracy(longer),
        "n_longer_wins": len(longer),
        "per_source": {source: {"n_pairs": len(ds), "accuracy": _accuracy(ds)}
                       for source, ds in sorted(by_source.items())},
        "ece": expected_calibration_error(diffs, n_bins),
        "reliability": reliability_bins(diffs, n_bins),
        "mean_margin": sum(diffs) / n if n else float("nan"),
        "verdict": baseline_verdict(correct / n, [low, high], longer_right / n) if n else "No pairs.",
    }
