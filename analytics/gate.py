"""When a model judge's verdict may stand in for a clinician's: the gate's rules, pure and in one place.

A verdict stands in (counts toward its comparison's required judgments, so the queue needs one
clinician fewer) only when all three hold:

(c) safety first: no one flagged either reply of the comparison, and the judge itself reports no
    safety concern; such comparisons always go to clinicians;
(b) the judge has earned it, and
(a) the verdict is confident: confidence ≥ the threshold.

By default (b) and (a) are one test with a guarantee (:func:`choose_threshold`, fixed-sequence
testing as in Trust or Escalate, Jung et al., ICLR 2025): the threshold is the lowest confidence at
which, on calibration comparisons (judged by the judge and by at least two clinicians), an exact
one-sided Clopper–Pearson lower bound on the judge's agreement with clinicians still reaches the
clinicians' agreement with each other. Both are measured the same way: a clinician against the
majority of the other clinicians on the comparison (:func:`clinician_agreement`), the judge against
the majority of the clinicians less one drawn at random, the one it would stand in for
(:func:`calibration_item`). With a threshold
given by hand (``--min-confidence``), (b) is the older rule: the judge's Cohen's kappa with
clinicians reaches their own mean pairwise kappa (:func:`qualifies`), and the bound is only reported.

``analytics.judges.apply_gate`` measures and applies these rules; ``db.judges.set_stands_in``
writes (and reverses) the marker.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from db.rules import majority_label, majority_of_counts

DEFAULT_MIN_CONFIDENCE = 0.8
DEFAULT_MIN_SHARED = 10
DEFAULT_ALPHA = 0.1
DEFAULT_MIN_CALIBRATION = 30


@dataclass(frozen=True)
class JudgeStanding:
    """A judge's measured agreement, next to the bar the clinicians set."""

    kappa: float
    n_shared: int
    clinician_kappa: float
    gold_kappa: float = math.nan
    n_gold: int = 0


def qualifies(standing: JudgeStanding, *, min_shared: int = DEFAULT_MIN_SHARED) -> tuple[bool, str]:
    """Rule (b): may any of this judge's verdicts stand in? With the reason, for the command's line.

    >>> qualifies(JudgeStanding(kappa=0.7, n_shared=40, clinician_kappa=0.6))
    (True, 'kappa 0.70 with clinicians on 40 shared comparisons reaches their own 0.60')
    >>> qualifies(JudgeStanding(kappa=0.4, n_shared=40, clinician_kappa=0.6))[1]
    'kappa 0.40 with clinicians on 40 shared comparisons is below their own 0.60'
    >>> qualifies(JudgeStanding(kappa=0.9, n_shared=3, clinician_kappa=0.6))
    (False, 'only 3 comparisons shared with clinicians (needs 10)')
    >>> qualifies(JudgeStanding(kappa=0.9, n_shared=40, clinician_kappa=math.nan))[0]
    False
    >>> print(qualifies(JudgeStanding(kappa=0.9, n_shared=40, clinician_kappa=0.6, gold_kappa=0.2, n_gold=8))[1])
    kappa 0.20 against gold answers (8 items) is below the clinicians' 0.60
    """
    bar = standing.clinician_kappa
    if not math.isfinite(bar):
        return False, "no clinician-clinician kappa to compare with (clinicians need shared comparisons)"
    if standing.n_shared < max(min_shared, 1):
        return False, f"only {standing.n_shared} comparisons shared with clinicians (needs {min_shared})"
    if not math.isfinite(standing.kappa) or standing.kappa < bar:
        shown = f"{standing.kappa:.2f}" if math.isfinite(standing.kappa) else "n/a"
        return False, (f"kappa {shown} with clinicians on {standing.n_shared} shared comparisons is below "
                       f"their own {bar:.2f}")
    if standing.n_gold and math.isfinite(standing.gold_kappa) and standing.gold_kappa < bar:
        return False, (f"kappa {standing.gold_kappa:.2f} against gold answers ({standing.n_gold} items) is below "
                       f"the clinicians' {bar:.2f}")
    return True, (f"kappa {standing.kappa:.2f} with clinicians on {standing.n_shared} shared comparisons reaches "
                  f"their own {bar:.2f}")


def may_stand_in(*, confidence: float, judge_qualifies: bool, flagged: bool, safety_concern: bool | None,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> bool:
    """Rules (c), (b), (a) for one verdict, in that order.

    >>> may_stand_in(confidence=0.99, judge_qualifies=True, flagged=True, safety_concern=False)
    False
    >>> may_stand_in(confidence=0.99, judge_qualifies=True, flagged=False, safety_concern=True)
    False
    >>> may_stand_in(confidence=0.99, judge_qualifies=False, flagged=False, safety_concern=False)
    False
    >>> may_stand_in(confidence=0.5, judge_qualifies=True, flagged=False, safety_concern=False)
    False
    >>> may_stand_in(confidence=0.9, judge_qualifies=True, flagged=False, safety_concern=False)
    True
    >>> may_stand_in(confidence=0.9, judge_qualifies=True, flagged=False, safety_concern=None)  # no opinion
    True
    """
    if flagged or safety_concern:
        return False
    if not judge_qualifies:
        return False
    return confidence >= min_confidence


# --- The guarantee ------------------------------------------------------------------------------------

def clopper_pearson_lower(successes: int, n: int, alpha: float) -> float:
    """The exact one-sided lower confidence bound, at level 1 - alpha, on a binomial proportion.

    19 agreements in 20 at alpha 0.1: the p at which P(X ≥ 19 | n=20, p) = p²⁰ + 20·p¹⁹·(1-p) = 0.1.

    >>> p = clopper_pearson_lower(19, 20, 0.1); round(p, 3), round(p**20 + 20 * p**19 * (1 - p), 6)
    (0.819, 0.1)
    >>> round(clopper_pearson_lower(10, 10, 0.1), 4), round(0.1 ** (1 / 10), 4)   # all agree: alpha^(1/n)
    (0.7943, 0.7943)
    >>> clopper_pearson_lower(0, 10, 0.1), clopper_pearson_lower(0, 0, 0.1)
    (0.0, 0.0)
    """
    if n <= 0 or successes <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(alpha, successes, n - successes + 1))


def clinician_agreement(votes: Iterable[Sequence[str]]) -> tuple[int, int]:
    """The clinicians' agreement with each other, as (agreeing, items): on each comparison with at
    least two clinicians, each clinician's label against the majority of the *other* clinicians
    there; items where the others are level are skipped. With two clinicians this is plain pairwise
    agreement.

    >>> clinician_agreement([["a", "a"], ["a", "b"], ["a", "a", "b"], ["b"]])
    (2, 5)
    """
    agreeing = items = 0
    for labels in votes:
        if len(labels) < 2:
            continue
        counts = Counter(labels)
        for label in labels:
            counts[label] -= 1
            others = majority_of_counts(counts)
            counts[label] += 1
            if others is not None:
                items += 1
                agreeing += label == others
    return agreeing, items


def left_out(comparison_id: int, k: int) -> int:
    """Which of a comparison's k clinicians (in judging order) the judge stands in for when it is
    checked: drawn at random, seeded by the comparison, never by anyone's label.

    >>> left_out(7, 3) == left_out(7, 3), 0 <= left_out(8, 2) < 2
    (True, True)
    """
    return random.Random(comparison_id).randrange(k)


def calibration_item(verdict: str, clinicians: Sequence[str], leave_out: int) -> bool | None:
    """Does the judge agree with the majority of the clinicians other than the one it stands in for
    (``clinicians[leave_out]``)? — the same reference a clinician is measured against in
    :func:`clinician_agreement`. None where fewer than two clinicians judged or that majority is
    level (the judge cannot be checked there).

    >>> calibration_item("a", ["b", "a", "a"], 0), calibration_item("a", ["a", "b"], 0), calibration_item("a", ["a"], 0)
    (True, False, None)
    >>> calibration_item("a", ["a", "a", "b"], 0)   # the other two are level
    """
    if len(clinicians) < 2:
        return None
    majority = majority_label([label for i, label in enumerate(clinicians) if i != leave_out])
    return None if majority is None else verdict == majority


def least_calibration(target: float, alpha: float) -> int:
    """The fewest comparisons on which even a perfect record (all agree, bound alpha^(1/n)) reaches
    ``target``: smaller subsets cannot pass, whatever the labels, so the sequence starts above them.

    >>> least_calibration(0.8, 0.1), least_calibration(0.9, 0.05), least_calibration(0.0, 0.1)
    (11, 29, 1)
    >>> least_calibration(0.999999, 0.1) > 10**6
    True
    """
    if target <= 0.0:
        return 1
    return max(1, math.ceil(math.log(alpha) / math.log(target) - 1e-12))


@dataclass(frozen=True)
class Guarantee:
    """What the fixed-sequence test chose: ``threshold`` None when no confidence passes (or when it
    refused to test); ``bound``, ``agreeing`` and ``n`` are at the threshold chosen, else at the first
    one that failed."""

    threshold: float | None
    bound: float
    agreeing: int
    n: int
    n_calibration: int
    target: float
    alpha: float
    reason: str

    @property
    def passed(self) -> bool:
        return self.threshold is not None


def bound_at(calibration: Sequence[tuple[float, bool]], threshold: float, alpha: float) -> tuple[float, int, int]:
    """(lower bound, agreeing, n) on the calibration items with confidence ≥ ``threshold``.

    >>> bound_at([(0.9, True)] * 19 + [(0.9, False), (0.5, False)], 0.8, 0.1)[1:]
    (19, 20)
    """
    chosen = [agrees for confidence, agrees in calibration if confidence >= threshold]
    return clopper_pearson_lower(sum(chosen), len(chosen), alpha), sum(chosen), len(chosen)


def choose_threshold(calibration: Sequence[tuple[float, bool]], *, target: float, alpha: float = DEFAULT_ALPHA,
                     min_calibration: int = DEFAULT_MIN_CALIBRATION, by_hand: bool = False) -> Guarantee:
    """The lowest confidence threshold at which the judge's agreement with clinicians is guaranteed to
    reach ``target`` with probability ≥ 1 - alpha, by fixed-sequence testing.

    ``calibration`` holds one (confidence, agrees: :func:`calibration_item`) per calibration
    comparison; fewer than ``min_calibration`` of them are refused. Candidate thresholds are the
    distinct confidences, highest first; those with fewer than ``min_calibration`` items at or above
    them (or fewer than :func:`least_calibration`, where no record could pass) are skipped — a choice
    that reads confidences only, never the labels, so it costs no validity. Each is tested in turn
    (Clopper–Pearson lower bound ≥ target) and the walk stops at the first failure, so the
    family-wise error stays ≤ alpha without correction. ``by_hand``: the target was set by hand (not
    the clinicians' agreement), as the reason then says.

    Twenty items at 0.9 of which 19 agree (bound 0.819), then two wrong ones at 0.6:

    >>> items = [(0.9, True)] * 19 + [(0.9, False)] + [(0.6, False)] * 2
    >>> g = choose_threshold(items, target=0.8, alpha=0.1, min_calibration=20)
    >>> g.threshold, round(g.bound, 3), g.agreeing, g.n
    (0.9, 0.819, 19, 20)
    >>> print(g.reason)
    threshold 0.9: its agreement with clinicians ≥ 0.82 at 90% confidence (19 of 20 agree; 22 calibration
    comparisons) vs theirs with each other 0.80
    >>> choose_threshold(items, target=0.85, alpha=0.1, min_calibration=20).threshold is None
    True
    >>> print(choose_threshold(items[:5], target=0.8, min_calibration=20).reason)
    only 5 calibration comparisons (needs 20: judged by it and by at least two clinicians)
    """
    n_all = len(calibration)
    if not math.isfinite(target):
        return Guarantee(None, math.nan, 0, 0, n_all, target, alpha,
                         "no clinician-clinician agreement to compare with (clinicians need shared comparisons)")
    if n_all < max(min_calibration, 1):
        return Guarantee(None, math.nan, 0, 0, n_all, target, alpha,
                         f"only {n_all} calibration comparisons (needs {min_calibration}: judged by it and by at "
                         "least two clinicians)")
    if target >= 1.0:
        return Guarantee(None, math.nan, 0, 0, n_all, target, alpha,
                         f"a target of {target:.2f} cannot be shown by any bound ({n_all} calibration comparisons)")
    smallest = max(least_calibration(target, alpha), min_calibration)
    bar, theirs = ("the target", "the target set by hand") if by_hand else ("the clinicians'", "theirs with each other")
    ordered = sorted(calibration, key=lambda item: -item[0])
    chosen: Guarantee | None = None
    agreeing = i = 0
    while i < n_all:
        threshold = ordered[i][0]
        while i < n_all and ordered[i][0] == threshold:
            agreeing += ordered[i][1]
            i += 1
        if i < smallest:
            continue
        bound = clopper_pearson_lower(agreeing, i, alpha)
        if bound < target:
            if chosen is None:
                return Guarantee(None, bound, agreeing, i, n_all, target, alpha, (
                    f"no confidence threshold reaches {bar} {target:.2f} at {1 - alpha:.0%} confidence "
                    f"(at ≥ {threshold:g}: {agreeing} of {i} agree, bound {bound:.2f}; {n_all} calibration "
                    "comparisons)"))
            break
        chosen = Guarantee(threshold, bound, agreeing, i, n_all, target, alpha, (
            f"threshold {threshold:g}: its agreement with clinicians ≥ {bound:.2f} at {1 - alpha:.0%} confidence "
            f"({agreeing} of {i} agree; {n_all} calibration comparisons) vs {theirs} {target:.2f}"))
    if chosen is None:
        return Guarantee(None, math.nan, agreeing, n_all, n_all, target, alpha, (
            f"{n_all} calibration comparisons cannot show {target:.2f} at {1 - alpha:.0%} confidence (needs "
            f"{smallest})"))
    return chosen


def check_alpha(value: float) -> float:
    """>>> check_alpha(0.1)
    0.1
    >>> check_alpha(0)
    Traceback (most recent call last):
    ...
    ValueError: --alpha must lie strictly between 0 and 1, not 0
    """
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"--alpha must lie strictly between 0 and 1, not {value}")
    return float(value)


def check_target(value: float) -> float:
    """>>> check_target(0.8)
    0.8
    >>> check_target(1.2)
    Traceback (most recent call last):
    ...
    ValueError: --target must lie between 0 and 1, not 1.2
    """
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"--target must lie between 0 and 1, not {value}")
    return float(value)


def check_min_confidence(value: float) -> float:
    """>>> check_min_confidence(0.8)
    0.8
    >>> check_min_confidence(1.5)
    Traceback (most recent call last):
    ...
    ValueError: --min-confidence must lie between 0 and 1, not 1.5
    """
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"--min-confidence must lie between 0 and 1, not {value}")
    return float(value)
