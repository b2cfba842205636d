"""Everything the dashboard and the report show, computed once from the database."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session

from analytics.adjudication import AdjudicationCounts, load_adjudication_counts
from analytics.agreement import AgreementReport, agreement_report
from analytics.config import AnalyticsConfig
from analytics.leaderboard import LeaderboardReport, leaderboard_report
from analytics.progress import Completion, FlagCounts, completion, daily_progress, safety_flag_counts
from analytics.quality import AnnotatorQuality, annotator_quality
from analytics.records import JudgmentRecord, load_judgments
from analytics.reward_eval import RewardAgreement, Scorer, majority_items, reward_vs_clinicians
from db.models import utcnow
from db.status import counts_by_source, database_fingerprint


@dataclass
class AnalyticsSummary:
    config: AnalyticsConfig
    generated_at: datetime
    fingerprint: str
    n_judgments: int
    n_annotators: int
    sources: dict
    completion: Completion
    progress: list[dict]
    agreement: AgreementReport
    quality: list[AnnotatorQuality]
    leaderboard: LeaderboardReport
    flags: list[FlagCounts]
    reward: RewardAgreement | None = None
    notes: list[str] = field(default_factory=list)
    #: Leads' final labels, counted apart from the judgments' agreement (analytics.adjudication).
    adjudication: AdjudicationCounts = field(default_factory=AdjudicationCounts)

    def as_dict(self) -> dict:
        return {
            "generated_at": self.generated_at.isoformat(), "database_fingerprint": self.fingerprint,
            "judges": self.config.judges, "n_bootstrap": self.config.n_bootstrap, "seed": self.config.seed,
            "n_judgments": self.n_judgments, "n_annotators": self.n_annotators, "sources": self.sources,
            "completion": self.completion.as_dict(), "progress": self.progress,
            "agreement": self.agreement.as_dict(), "annotators": [q.as_dict() for q in self.quality],
            "leaderboard": self.leaderboard.as_dict(), "safety_flags": [f.as_dict() for f in self.flags],
            "reward_model": self.reward.as_dict() if self.reward else None, "notes": self.notes,
            "adjudication": self.adjudication.as_dict(),
        }


def summarize_records(records: list[JudgmentRecord], config: AnalyticsConfig) -> dict:
    """The database-free part of the summary (also what the dashboard recomputes on filters)."""
    c = config
    return {
        "progress": daily_progress(records),
        "agreement": agreement_report(records, min_shared_items=c.min_shared_items, n_bootstrap=c.n_bootstrap,
                                      confidence=c.confidence, seed=c.seed),
        "quality": annotator_quality(records, fast_seconds=c.fast_seconds, bias_alpha=c.bias_alpha,
                                     confidence=c.confidence),
        "leaderboard": leaderboard_report(records, n_bootstrap=c.n_bootstrap, confidence=c.confidence, seed=c.seed,
                                          scale=c.bt_scale, anchor_rating=c.bt_anchor_rating,
                                          anchor_model=c.bt_anchor_model, ridge=c.bt_ridge,
                                          both_bad_as_tie=c.both_bad_as_tie, min_topic_battles=c.min_topic_battles),
        "flags": safety_flag_counts(records),
    }


def build_summary(
    *, session: Session, config: AnalyticsConfig | None = None, scorer: Scorer | None = None,
    scorer_label: str = "", held_out_ids: Iterable[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> AnalyticsSummary:
    """Load the judgments of ``config.judges`` and compute every section.

    With ``scorer``, add the reward model vs judges section on ``held_out_ids`` (all comparisons
    when None: say so, since training comparisons inflate agreement).
    """
    config = config or AnalyticsConfig()
    say = progress or (lambda _message: None)
    say("Loading judgments")
    records = load_judgments(session=session, sources=config.sources)
    say(f"Analysing {len(records)} judgments ({config.n_bootstrap} bootstrap resamples)")
    parts = summarize_records(records, config)
    notes = []
    if not records:
        notes.append(f"No judgments by {config.judges} yet: every section below is empty.")
    elif parts["agreement"].n_comparisons == 0:
        notes.append("No comparison has been judged by two or more annotators, so agreement cannot be measured"
                     + (" (each imported preference is one judgment)." if config.judges == "imported" else
                        ": raise judgments_required (overlap) with `therapref pairs --overlap K`."))
    reward = None
    if scorer is not None:
        ids = None if held_out_ids is None else list(held_out_ids)
        items = majority_items(session=session, sources=config.sources, comparison_ids=ids)
        say(f"Scoring {len(items)} comparisons with the reward model")
        reward = reward_vs_clinicians(items, scorer, n_bootstrap=config.n_bootstrap, confidence=config.confidence,
                                      seed=config.seed, max_disagreements=config.max_disagreements,
                                      label=scorer_label)
        if ids is None:
            notes.append("The reward model is compared on all comparisons: no held-out split was recorded, "
                         "so comparisons it was trained on may inflate its agreement.")
    return AnalyticsSummary(
        config=config, generated_at=utcnow(), fingerprint=database_fingerprint(session=session),
        n_judgments=len(records), n_annotators=len({r.annotator for r in records}),
        sources=counts_by_source(session=session), completion=completion(session=session),
        progress=parts["progress"], agreement=parts["agreement"], quality=parts["quality"],
        leaderboard=parts["leaderboard"], flags=parts["flags"], reward=reward, notes=notes,
        adjudication=load_adjudication_counts(session=session),
    )
