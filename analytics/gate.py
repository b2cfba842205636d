"""When a model judge's verdict may stand in for a clinician's: the gate's rules, pure and in one place.

A verdict stands in (counts toward its comparison's required judgments, so the queue needs one
clinician fewer) only when all three hold:

(c) safety first: no one flagged either reply of the comparison, and the judge itself reports no
    safety concern; such comparisons always go to clinicians;
(b) the judge has earned it: its Cohen's kappa with clinicians on comparisons they share reaches the
    clinicians' own agreement (mean pairwise clinician kappa), on enough shared comparisons, and its
    kappa against gold answers (where it judged gold items and kappa is defined) does too;
(a) the verdict is confident: confidence ≥ the threshold.

``analytics.judges.apply_gate`` measures (b) and applies these rules; ``db.judges.set_stands_in``
writes (and reverses) the marker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_MIN_CONFIDENCE = 0.8
DEFAULT_MIN_SHARED = 10


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
