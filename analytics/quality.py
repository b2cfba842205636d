"""Annotator quality: agreement with the others' majority, position bias, tie/both-bad rates,
speed, and accuracy on gold comparisons."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy.stats import binomtest

from analytics.records import JudgmentRecord, by_comparison
from analytics.stats import Estimate
from db.rules import majority_label


def proportion(successes: int, trials: int, confidence: float = 0.95) -> Estimate:
    """A share with its Wilson score interval.

    >>> e = proportion(8, 10)
    >>> e.value, round(e.low, 3), round(e.high, 3), e.n_items
    (0.8, 0.49, 0.943, 10)
    >>> proportion(0, 0).fmt()
    'n/a (n=0)'
    """
    if trials == 0:
        return Estimate(math.nan, n_items=0)
    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(successes / trials, float(ci.low), float(ci.high), trials)


@dataclass(frozen=True)
class PositionBias:
    """Share of left-side choices among a/b choices, with a two-sided binomial test against 1/2."""

    left: int
    choices: int
    p_value: float
    biased: bool

    @property
    def left_share(self) -> float:
        return self.left / self.choices if self.choices else math.nan


NO_SCREEN = PositionBias(0, 0, math.nan, False)


def position_bias(records: Sequence[JudgmentRecord], *, alpha: float = 0.05) -> PositionBias:
    """Test whether the left reply is chosen more (or less) often than chance.

    >>> recs = [JudgmentRecord(i, "x", "a", shown_left="a") for i in range(18)]
    >>> recs += [JudgmentRecord(100 + i, "x", "a", shown_left="b") for i in range(2)]
    >>> bias = position_bias(recs)
    >>> bias.left, bias.choices, bias.biased
    (18, 20, True)
    """
    sides = [r.chose_left for r in records if r.chose_left is not None]
    left, n = sum(sides), len(sides)
    p_value = binomtest(left, n, 0.5).pvalue if n else math.nan
    return PositionBias(left, n, float(p_value), bool(n and p_value < alpha))


def leave_one_out_majority(records: Sequence[JudgmentRecord]) -> dict[int, str]:
    """For each judgment (by ``judgment_id``, falling back to its position), the majority preference
    of the *other* annotators on the same comparison; judgments without one (no other judgment, or
    a tied vote) are absent.

    >>> rs = [JudgmentRecord(1, "x", "a", judgment_id=1), JudgmentRecord(1, "y", "a", judgment_id=2),
    ...       JudgmentRecord(1, "z", "b", judgment_id=3)]
    >>> leave_one_out_majority(rs)
    {3: 'a'}
    """
    result: dict[int, str] = {}
    for group in by_comparison(records).values():
        for record in group:
            top = majority_label(r.preferred for r in group if r.annotator != record.annotator)
            if top is not None:  # None: nobody else judged it, or the others' vote is split
                result[record.judgment_id] = top
    return result


@dataclass
class AnnotatorQuality:
    annotator: str
    role: str
    n_judgments: int
    majority_agreement: Estimate
    position: PositionBias
    tie_rate: float
    both_bad_rate: float
    median_seconds: float
    fast: int
    gold_accuracy: Estimate

    @property
    def fast_share(self) -> float:
        return self.fast / self.n_judgments if self.n_judgments else math.nan

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("majority_agreement", "gold_accuracy", "position")}
        out.update(majority_agreement=self.majority_agreement.as_dict(), gold_accuracy=self.gold_accuracy.as_dict(),
                   left_share=_clean(self.position.left_share), left_choices=self.position.left,
                   ab_choices=self.position.choices, position_p_value=_clean(self.position.p_value),
                   position_biased=self.position.biased, fast_share=_clean(self.fast_share))
        return {k: _clean(v) for k, v in out.items()}


def _clean(value):  # noqa: ANN001, ANN202 - JSON has no NaN
    return None if isinstance(value, float) and not math.isfinite(value) else value


def annotator_quality(
    records: Sequence[JudgmentRecord], *, fast_seconds: float = 3.0, bias_alpha: float = 0.05,
    confidence: float = 0.95,
) -> list[AnnotatorQuality]:
    """One row per annotator (most judgments first). Records must carry distinct ``judgment_id``s."""
    if len({r.judgment_id for r in records}) != len(records):
        records = [JudgmentRecord(**{**asdict(r), "judgment_id": i}) for i, r in enumerate(records, start=1)]
    majority = leave_one_out_majority(records)
    by_annotator: dict[str, list[JudgmentRecord]] = {}
    for record in records:
        by_annotator.setdefault(record.annotator, []).append(record)
    rows = []
    for name, own in by_annotator.items():
        n = len(own)
        with_majority = [r for r in own if r.judgment_id in majority]
        agree = sum(r.preferred == majority[r.judgment_id] for r in with_majority)
        gold = [r for r in own if r.gold_answer]
        seconds = [r.ms_spent / 1000 for r in own if r.ms_spent is not None]
        rows.append(AnnotatorQuality(
            annotator=name, role=own[0].role, n_judgments=n,
            majority_agreement=proportion(agree, len(with_majority), confidence),
            # Imported datasets never showed anything on a screen: no position to be biased by.
            position=position_bias(own, alpha=bias_alpha) if own[0].role != "source" else NO_SCREEN,
            tie_rate=sum(r.preferred == "tie" for r in own) / n,
            both_bad_rate=sum(r.preferred == "both_bad" for r in own) / n,
            median_seconds=statistics.median(seconds) if seconds else math.nan,
            fast=sum(s < fast_seconds for s in seconds),
            gold_accuracy=proportion(sum(r.preferred == r.gold_answer for r in gold), len(gold), confidence),
        ))
    rows.sort(key=lambda q: (-q.n_judgments, q.annotator))
    return rows
