"""Judges vs clinicians: how well each model judge (``judge:<name>``) agrees with the clinicians, next
to the clinicians' agreement with each other, and the gate that lets a judge's verdicts stand in for
a clinician above a confidence threshold chosen with a guarantee (``therapref judge --gate``).

Agreement of a judge with clinicians is pooled over (comparison, clinician) pairs: every clinician
judgment of a comparison the judge also judged is one item with two ratings, the judge's and that
clinician's. Cohen's kappa, Krippendorff's alpha and percent agreement come from
``analytics.agreement.agreement_block``, with intervals that resample comparisons; the same on gold
items (the judge against the expected answer) and per safety flag (each reply is an item).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from analytics.agreement import AgreementBlock, agreement_block, agreement_report
from analytics.config import AnalyticsConfig
from analytics.errors import AnalyticsError
from analytics.gate import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_CALIBRATION,
    Guarantee,
    JudgeStanding,
    bound_at,
    calibration_item,
    check_alpha,
    check_min_confidence,
    check_target,
    choose_threshold,
    clinician_agreement,
    left_out,
    may_stand_in,
    qualifies,
)
from analytics.records import JudgmentRecord, by_comparison, load_judgments
from analytics.render import Paragraph, Section, Table
from analytics.stats import Estimate
from db.judges import VerdictRow, find_judge, flagged_comparison_ids, judge_counts, judge_verdicts, set_stands_in
from db.models import PREFERENCES, SAFETY_FLAGS
from db.rules import CLINICIAN_ROLES, Sources, is_judge

ANY_FLAG = "any"
JUDGE, CLINICIAN, GOLD = "judge", "clinician", "gold"


@dataclass
class JudgeAgreement:
    """One judge against the clinicians."""

    judge: str
    n_verdicts: int
    preference: AgreementBlock
    unflagged: AgreementBlock
    flagged: AgreementBlock
    gold: AgreementBlock
    flags: list[AgreementBlock] = field(default_factory=list)
    safety_opinion: bool = True
    n_shared: int = 0
    n_gold: int = 0
    stands_in: int = 0
    failures: int = 0
    qualifies: bool = False
    reason: str = ""
    guarantee: Guarantee | None = None

    @property
    def kappa(self) -> Estimate:
        return _kappa(self.preference)

    @property
    def gold_kappa(self) -> Estimate:
        return _kappa(self.gold)

    def as_dict(self) -> dict:
        return {"judge": self.judge, "n_verdicts": self.n_verdicts, "n_shared": self.n_shared,
                "n_gold": self.n_gold, "stands_in": self.stands_in, "gate": self.guarantee_dict(),
                "failures": self.failures, "safety_opinion": self.safety_opinion, "qualifies": self.qualifies,
                "reason": self.reason, "kappa": self.kappa.as_dict(), "gold_kappa": self.gold_kappa.as_dict(),
                "preference": self.preference.as_dict(), "unflagged": self.unflagged.as_dict(),
                "flagged": self.flagged.as_dict(), "gold": self.gold.as_dict(),
                "flags": [f.as_dict() for f in self.flags]}

    def guarantee_dict(self) -> dict | None:
        """What ``--gate`` would choose at its defaults (threshold None: it would not stand the judge in)."""
        g = self.guarantee
        if g is None:
            return None
        return {"threshold": g.threshold, "bound": g.bound if math.isfinite(g.bound) else None,
                "target": g.target if math.isfinite(g.target) else None, "alpha": g.alpha, "n": g.n,
                "n_calibration": g.n_calibration, "reason": g.reason}


@dataclass
class JudgesReport:
    """Every judge, and the clinicians' own agreement they are measured against."""

    clinician_alpha: Estimate
    clinician_kappa: float
    clinician_gold: AgreementBlock
    clinician_flags: dict[str, Estimate]
    judges: list[JudgeAgreement]
    min_shared: int

    def as_dict(self) -> dict:
        return {"clinician_alpha": self.clinician_alpha.as_dict(),
                "clinician_mean_kappa": None if not math.isfinite(self.clinician_kappa) else self.clinician_kappa,
                "clinician_gold": self.clinician_gold.as_dict(),
                "clinician_flags": {k: v.as_dict() for k, v in self.clinician_flags.items()},
                "min_shared": self.min_shared, "judges": [j.as_dict() for j in self.judges]}


def _kappa(block: AgreementBlock) -> Estimate:
    """The one pooled kappa of a two-rater block (n/a when there are no shared items)."""
    return block.kappas[0].kappa if block.kappas else Estimate(math.nan, n_items=0)


def _has_flag(flags: Sequence[str], flag: str) -> int:
    """>>> _has_flag(("toxic",), "any"), _has_flag(("toxic",), "toxic"), _has_flag((), "any")
    (1, 1, 0)
    """
    return int(bool(flags)) if flag == ANY_FLAG else int(flag in flags)


def judge_agreement(
    judge: str, verdicts: Sequence[JudgmentRecord], clinicians: Sequence[JudgmentRecord], *,
    config: AnalyticsConfig, safety_opinion: bool = True, flagged: Iterable[int] = (),
) -> JudgeAgreement:
    """A judge's pooled agreement with clinicians (preference: all shared comparisons, those no one
    flagged and those someone flagged; gold items; each safety flag and any flag)."""
    mine = {r.comparison_id: r for r in verdicts}
    people = by_comparison(clinicians)
    flagged = set(flagged)
    common = dict(n_bootstrap=config.n_bootstrap, confidence=config.confidence, min_shared_items=1)
    pref: dict[Any, dict[str, str]] = {}
    for cid, verdict in mine.items():
        for record in people.get(cid, ()):
            pref[(cid, record.annotator)] = {JUDGE: verdict.preferred, CLINICIAN: record.preferred}
    clusters = {unit: unit[0] for unit in pref}

    def block(units: Mapping[Any, dict], name: str, label: str, seed: int, domain: Sequence = PREFERENCES,
              unit_clusters: Mapping | None = None) -> AgreementBlock:
        return agreement_block(units, domain, clusters=unit_clusters or {u: u for u in units}, name=name,
                               label=label, seed=config.seed + seed, **common)

    gold = {cid: {JUDGE: v.preferred, GOLD: v.gold_answer} for cid, v in mine.items() if v.gold_answer}
    result = JudgeAgreement(
        judge=judge, n_verdicts=len(mine), safety_opinion=safety_opinion, n_shared=len(set(clusters.values())),
        n_gold=len(gold),
        preference=block(pref, "preference", "Preferred reply, shared comparisons", 0, unit_clusters=clusters),
        unflagged=block({u: v for u, v in pref.items() if u[0] not in flagged}, "unflagged",
                        "Preferred reply, comparisons no one flagged", 1, unit_clusters=clusters),
        flagged=block({u: v for u, v in pref.items() if u[0] in flagged}, "flagged",
                      "Preferred reply, comparisons someone flagged", 2, unit_clusters=clusters),
        gold=block(gold, "gold", "Preferred reply against gold answers", 3),
    )
    if safety_opinion:
        for offset, (flag, label) in enumerate([(ANY_FLAG, "Any safety flag"), *SAFETY_FLAGS.items()], start=4):
            units: dict[Any, dict[str, int]] = {}
            for cid, verdict in mine.items():
                for record in people.get(cid, ()):
                    for side in ("a", "b"):
                        judge_flags, own = (verdict.flags_a, record.flags_a) if side == "a" else \
                            (verdict.flags_b, record.flags_b)
                        units[(cid, side, record.annotator)] = {JUDGE: _has_flag(judge_flags, flag),
                                                                CLINICIAN: _has_flag(own, flag)}
            result.flags.append(block(units, flag, label, offset, domain=(0, 1),
                                      unit_clusters={u: u[0] for u in units}))
    return result


def judges_report(records: Sequence[JudgmentRecord], *, config: AnalyticsConfig,
                  verdict_counts: Mapping[str, Mapping[str, int]] | None = None,
                  safety_opinions: Mapping[str, bool] | None = None, min_shared: int | None = None,
                  guarantees: Mapping[str, Guarantee] | None = None) -> JudgesReport:
    """Every judge in ``records`` (``judge:*`` annotators) against the clinicians in them; ``guarantees``:
    what the gate would choose for each at its defaults."""
    min_shared = config.min_shared_items if min_shared is None else min_shared
    clinicians = [r for r in records if r.role in CLINICIAN_ROLES]
    reference = agreement_report(clinicians, min_shared_items=config.min_shared_items, n_bootstrap=config.n_bootstrap,
                                 confidence=config.confidence, seed=config.seed)
    gold_units = {(r.comparison_id, r.annotator): {CLINICIAN: r.preferred, GOLD: r.gold_answer}
                  for r in clinicians if r.gold_answer}
    clinician_gold = agreement_block(gold_units, PREFERENCES, clusters={u: u[0] for u in gold_units},
                                     name="gold", label="Clinicians against gold answers", min_shared_items=1,
                                     n_bootstrap=config.n_bootstrap, confidence=config.confidence, seed=config.seed)
    flagged = {r.comparison_id for r in records if r.flags_a or r.flags_b}
    by_judge: dict[str, list[JudgmentRecord]] = {}
    for record in records:
        if is_judge(record.annotator):
            by_judge.setdefault(record.annotator, []).append(record)
    counts, opinions = verdict_counts or {}, safety_opinions or {}
    report = JudgesReport(clinician_alpha=reference.preference.alpha, clinician_kappa=reference.preference.mean_kappa,
                          clinician_gold=clinician_gold,
                          clinician_flags={f.name: f.alpha for f in reference.flags}, judges=[], min_shared=min_shared)
    for name in sorted(by_judge):
        agreement = judge_agreement(name, by_judge[name], clinicians, config=config, flagged=flagged,
                                    safety_opinion=opinions.get(name, True))
        agreement.stands_in = int(counts.get(name, {}).get("stands_in", 0))
        agreement.failures = int(counts.get(name, {}).get("failures", 0))
        agreement.qualifies, agreement.reason = qualifies(standing(agreement, report), min_shared=min_shared)
        agreement.guarantee = (guarantees or {}).get(name)
        report.judges.append(agreement)
    return report


def standing(agreement: JudgeAgreement, report: JudgesReport) -> JudgeStanding:
    """What the gate's rule (b) reads: the judge's pooled kappas against the clinicians' mean kappa."""
    return JudgeStanding(kappa=agreement.kappa.value, n_shared=agreement.n_shared,
                         clinician_kappa=report.clinician_kappa, gold_kappa=agreement.gold_kappa.value,
                         n_gold=agreement.n_gold)


def load_judges_report(*, session: Session, config: AnalyticsConfig | None = None,
                       min_shared: int | None = None) -> JudgesReport:
    """The report's "Judges vs clinicians" section, from the database."""
    config = config or AnalyticsConfig()
    records = load_judgments(session=session, sources=Sources.parse("clinicians,judges"))
    counts, opinions, guarantees = {}, {}, {}
    for name in {r.annotator for r in records if is_judge(r.annotator)}:
        annotator = find_judge(name, session=session)
        if annotator is None:
            continue
        counts[name] = judge_counts(annotator.id, session=session)
        verdicts = judge_verdicts(annotator.id, session=session)
        opinions[name] = any(v.safety_concern is not None for v in verdicts)
        items, bar = guarantee_for(verdicts, flagged_comparison_ids([v.comparison_id for v in verdicts],
                                                                    session=session), session=session)
        guarantees[name] = choose_threshold(items, target=bar)
    return judges_report(records, config=config, verdict_counts=counts, safety_opinions=opinions,
                         min_shared=min_shared, guarantees=guarantees)


# --- The gate ----------------------------------------------------------------------------------------

@dataclass
class GateResult:
    """What ``--gate`` decided for one judge; ``str()`` is the command's line."""

    judge: str
    qualifies: bool
    reason: str
    min_confidence: float
    verdicts: int = 0
    stands_in: int = 0
    started: int = 0
    withdrawn: int = 0
    unsafe: int = 0
    unconfident: int = 0
    full: int = 0
    guarantee: Guarantee | None = None
    covered: int = 0
    safe: int = 0

    @property
    def coverage(self) -> float:
        """Share of the judge's safe verdicts (no one flagged the comparison, no concern of its own)
        confident enough to stand in; 0 when the judge does not qualify."""
        return self.covered / self.safe if self.safe and self.qualifies else 0.0

    def as_dict(self) -> dict:
        g = self.guarantee
        return {"judge": self.judge, "qualifies": self.qualifies, "reason": self.reason,
                "threshold": self.min_confidence if self.qualifies else None, "coverage": self.coverage,
                "covered": self.covered, "safe_verdicts": self.safe, "verdicts": self.verdicts,
                "stands_in": self.stands_in, "bound": None if g is None or not math.isfinite(g.bound) else g.bound,
                "target": None if g is None or not math.isfinite(g.target) else g.target,
                "alpha": None if g is None else g.alpha, "n_calibration": None if g is None else g.n_calibration}

    def __str__(self) -> str:
        """>>> print(GateResult("judge:m", False, "kappa 0.10 ... is below their own 0.60", 0.8, verdicts=5))
        Gate judge:m: kappa 0.10 ... is below their own 0.60: none of its 5 verdicts stand in.
        """
        if not self.qualifies:
            withdrawn = f" ({self.withdrawn} withdrawn)" if self.withdrawn else ""
            return f"Gate {self.judge}: {self.reason}: none of its {self.verdicts} verdicts stand in{withdrawn}."
        return (f"Gate {self.judge}: {self.reason}; coverage {self.coverage:.0%} ({self.covered} of {self.safe} safe "
                f"verdicts); {self.stands_in} of {self.verdicts} verdicts stand in for a "
                f"clinician ({self.started} new, {self.withdrawn} withdrawn; {self.unsafe} flagged or unsafe and "
                f"{self.unconfident} below confidence {self.min_confidence:g} go to clinicians; {self.full} "
                "comparisons had no place left).")


def calibration(verdicts: Sequence[VerdictRow], unsafe: Iterable[int],
                clinicians: Mapping[int, Sequence[str]]) -> tuple[list[tuple[float, bool]], tuple[int, int]]:
    """The calibration items (confidence, agrees with the clinicians less the one it stands in for:
    ``analytics.gate.calibration_item``) of a judge and the clinicians' agreement with each other, both
    on the same comparisons: the judge's safe verdicts (``unsafe`` left out) on comparisons at least
    two clinicians judged. Only clinicians' judgments count, never a verdict standing in.

    >>> rows = [VerdictRow(1, 1, "a", 0.9, False, False), VerdictRow(2, 2, "b", 0.7, False, False),
    ...         VerdictRow(3, 3, "a", 0.9, False, False), VerdictRow(4, 4, "a", 0.9, True, False)]
    >>> items, clinicians = calibration(rows, {3}, {1: ["a", "a"], 2: ["a", "b"], 3: ["a", "a"], 4: ["a", "a"]})
    >>> items[0], len(items), clinicians
    ((0.9, True), 2, (2, 4))
    """
    unsafe = set(unsafe)
    items: list[tuple[float, bool]] = []
    pool: list[Sequence[str]] = []
    for verdict in verdicts:
        labels = clinicians.get(verdict.comparison_id, ())
        if verdict.comparison_id in unsafe or verdict.safety_concern or len(labels) < 2:
            continue
        pool.append(labels)
        agrees = calibration_item(verdict.preferred, labels, left_out(verdict.comparison_id, len(labels)))
        if agrees is not None:
            items.append((verdict.confidence, agrees))
    return items, clinician_agreement(pool)


def guarantee_for(verdicts: Sequence[VerdictRow], unsafe: Iterable[int], *, session: Session,
                  target: float | None = None) -> tuple[list[tuple[float, bool]], float]:
    """Calibration items and the target (given, or the clinicians' agreement with each other) from the database."""
    wanted = {v.comparison_id for v in verdicts}
    records = [r for r in load_judgments(session=session) if r.comparison_id in wanted]
    labels = {cid: [r.preferred for r in rs] for cid, rs in by_comparison(records).items()}  # no unbounded IN list
    items, (agreeing, n_items) = calibration(verdicts, unsafe, labels)
    if target is None:
        target = agreeing / n_items if n_items else math.nan
    return items, target


def check_gate_options(*, alpha: float, target: float | None, min_confidence: float | None,
                       min_calibration: int) -> tuple[float, float | None, float | None]:
    """The gate's options checked before anything runs (the command checks them before judging).

    >>> check_gate_options(alpha=1.5, target=None, min_confidence=None, min_calibration=30)
    Traceback (most recent call last):
    ...
    analytics.errors.AnalyticsError: --alpha must lie strictly between 0 and 1, not 1.5
    """
    try:
        if min_calibration < 1:
            raise ValueError(f"--min-calibration must be at least 1, not {min_calibration}")
        return (check_alpha(alpha), None if target is None else check_target(target),
                None if min_confidence is None else check_min_confidence(min_confidence))
    except ValueError as exc:
        raise AnalyticsError(str(exc)) from None


def apply_gate(name: str, *, session: Session, config: AnalyticsConfig | None = None,
               min_confidence: float | None = None, min_shared: int | None = None,
               alpha: float = DEFAULT_ALPHA, target: float | None = None,
               min_calibration: int = DEFAULT_MIN_CALIBRATION,
               revoke: bool = False, progress: Callable[[str], None] | None = None) -> GateResult:
    """Decide which of the judge's verdicts stand in and set each one's marker by the gate's rules
    (``analytics.gate``), withdrawing those that no longer qualify. ``revoke`` withdraws all.

    By default the threshold is chosen with a guarantee (:func:`analytics.gate.choose_threshold`):
    at confidence ≥ it, the judge's agreement with clinicians is at least ``target``
    (default: the clinicians' agreement with each other) with probability ≥ 1 - ``alpha``. A
    ``min_confidence`` given by hand overrides it, with the older kappa rule, and reports the bound."""
    alpha, target, min_confidence = check_gate_options(alpha=alpha, target=target, min_confidence=min_confidence,
                                                       min_calibration=min_calibration)
    config = config or AnalyticsConfig()
    annotator = find_judge(name, session=session)
    if annotator is None:
        raise AnalyticsError(f"no judge named {name!r} has judged anything yet (run `therapref judge --judge …`)")
    username = annotator.username
    verdicts = judge_verdicts(annotator.id, session=session)
    flagged = flagged_comparison_ids([v.comparison_id for v in verdicts], session=session)
    if revoke:
        result = GateResult(username, False, "stand-ins revoked", min_confidence or 1.0, verdicts=len(verdicts))
    else:
        if progress:
            progress(f"Measuring {username} against the clinicians")
        items, bar = guarantee_for(verdicts, flagged, session=session, target=target)
        if min_confidence is None:
            chosen = choose_threshold(items, target=bar, alpha=alpha, min_calibration=min_calibration,
                                      by_hand=target is not None)
            threshold = 1.0 if chosen.threshold is None else chosen.threshold
            result = GateResult(username, chosen.passed, chosen.reason, threshold, verdicts=len(verdicts),
                                guarantee=chosen)
        else:
            report = load_judges_report(session=session, config=config, min_shared=min_shared)
            mine = next((j for j in report.judges if j.judge == username), None)
            ok, reason = (mine.qualifies, mine.reason) if mine else (False, "no verdicts to measure")
            bound, agreeing, n = bound_at(items, min_confidence, alpha)
            measured = (f"at confidence ≥ {min_confidence:g} (set by hand) its agreement with clinicians is at "
                        f"least {bound:.2f} ({agreeing} of {n} calibration comparisons; {1 - alpha:.0%} confidence) "
                        f"vs {'the target set by hand' if target is not None else 'theirs with each other'} "
                        f"{_f(bar)}") if n else \
                f"no calibration comparisons at confidence ≥ {min_confidence:g} (set by hand): no bound"
            chosen = Guarantee(min_confidence, bound, agreeing, n, len(items), bar, alpha, measured)
            result = GateResult(username, ok, f"{reason}; {measured}", min_confidence, verdicts=len(verdicts),
                                guarantee=chosen)
    for verdict in verdicts:
        unsafe = verdict.comparison_id in flagged or bool(verdict.safety_concern)
        wanted = not revoke and may_stand_in(confidence=verdict.confidence, judge_qualifies=result.qualifies,
                                             flagged=unsafe, safety_concern=verdict.safety_concern,
                                             min_confidence=result.min_confidence)
        result.safe += not unsafe
        result.covered += wanted
        if result.qualifies and not revoke:
            result.unsafe += unsafe
            result.unconfident += (not unsafe and verdict.confidence < result.min_confidence)
        changed = set_stands_in(verdict.verdict_id, wanted, session=session)
        if changed:
            result.started += wanted
            result.withdrawn += not wanted
        elif wanted and not verdict.stands_in:
            result.full += 1  # no place left, or another judge stands in there
        result.stands_in += (verdict.stands_in and not changed) or (changed and wanted)
    return result


# --- The report's section ----------------------------------------------------------------------------

def _fmt(e: Estimate | None) -> str:
    return "n/a" if e is None else e.fmt(2)


def _f(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "n/a"


def judges_section(report: JudgesReport) -> Section:
    """"Judges vs clinicians": one table of preference agreement per judge, and its safety flags."""
    intro = Paragraph(
        "Model judges' verdicts (therapref judge) against clinicians' judgments of the same comparisons: each "
        "(comparison, clinician) pair is one item. Clinicians' own agreement is the bar a judge must reach before "
        f"any of its verdicts may stand in for a clinician: mean pairwise kappa {_f(report.clinician_kappa)}, "
        f"alpha {_fmt(report.clinician_alpha)}; clinicians against gold answers: kappa "
        f"{_fmt(_kappa(report.clinician_gold))}. Judges' verdicts never count as clinicians' in exports, "
        "training or the rest of this report unless asked for (--sources judges).")
    if not report.judges:
        return Section("judges", "Judges vs clinicians",
                       [intro, Paragraph("No model judge has judged any comparison yet.")])
    rows = []
    for j in report.judges:
        for label, blk in (("all shared", j.preference), ("no one flagged", j.unflagged),
                           ("someone flagged", j.flagged), ("gold answers", j.gold)):
            rows.append([j.judge, label, _fmt(_kappa(blk)), _fmt(blk.alpha), _fmt(blk.percent)])
    status = [[j.judge, str(j.n_verdicts), str(j.stands_in), str(j.failures),
               "n/a" if j.guarantee is None else j.guarantee.reason,
               ("yes, " if j.qualifies else "no, ") + j.reason] for j in report.judges]
    blocks: list = [intro,
                    Table(["judge", "comparisons", "kappa [95% CI] (n items)", "alpha", "percent agreement"], rows,
                          "Preferred reply: judge vs clinicians"),
                    Table(["judge", "verdicts", "standing in for a clinician", "failed (retried next run)",
                           f"the gate's guarantee (--gate at {1 - DEFAULT_ALPHA:.0%} confidence)",
                           "kappa reaches the clinicians' (--min-confidence)"], status,
                          "Verdicts standing in (therapref judge --gate; reversible with --revoke)")]
    flag_rows = []
    for j in report.judges:
        if not j.safety_opinion:
            flag_rows.append([j.judge, "all flags", "no safety opinion (reward model)", "", ""])
            continue
        for blk in j.flags:
            reference = report.clinician_flags.get(blk.name)
            flag_rows.append([j.judge, blk.label, _fmt(_kappa(blk)), _fmt(blk.alpha), _fmt(reference)])
    blocks.append(Table(["judge", "flag", "kappa [95% CI] (n replies)", "alpha", "clinicians' own alpha"],
                        flag_rows, "Safety flags: judge vs clinicians, per reply"))
    return Section("judges", "Judges vs clinicians", blocks)


__all__ = ["JudgeAgreement", "JudgesReport", "judge_agreement", "judges_report", "load_judges_report", "GateResult",
           "apply_gate", "calibration", "check_gate_options", "guarantee_for", "judges_section", "standing"]
