"""The analytics settings: one TRL-style dataclass with help text, built at the edge (CLI, app)."""

from __future__ import annotations

from dataclasses import dataclass, field

from db.rules import CLINICIAN_ROLES

JUDGES = ("clinicians", "imported", "all")


@dataclass
class AnalyticsConfig:
    judges: str = field(default="clinicians", metadata={
        "help": "whose judgments count: clinicians (role clinician/admin), imported (dataset sources) or all "
                "(model judges judge:* too)"})
    n_bootstrap: int = field(default=500, metadata={"help": "bootstrap resamples behind every 95% CI"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})
    seed: int = field(default=0, metadata={"help": "random seed: the same data and seed give the same report"})
    min_shared_items: int = field(default=10, metadata={
        "help": "shared comparisons a pair of annotators needs before Cohen's kappa is reported"})
    fast_seconds: float = field(default=3.0, metadata={"help": "judgments quicker than this count as very fast"})
    bias_alpha: float = field(default=0.05, metadata={
        "help": "significance level of the position-bias binomial test"})
    bt_scale: float = field(default=400.0, metadata={"help": "Elo-like scale: points per factor of 10 in odds"})
    bt_anchor_rating: float = field(default=1000.0, metadata={"help": "rating given to the anchor (or the mean)"})
    bt_anchor_model: str | None = field(default=None, metadata={
        "help": "candidate pinned at the anchor rating (default: the mean rating is the anchor)"})
    bt_ridge: float = field(default=0.1, metadata={
        "help": "L2 penalty on log-strengths (a Gaussian prior, sd = 1/sqrt(ridge) logits); keeps ratings "
                "finite when a model wins every battle"})
    both_bad_as_tie: bool = field(default=True, metadata={
        "help": "count both_bad as a tie (half win each) in the leaderboard; if false it is dropped"})
    min_topic_battles: int = field(default=20, metadata={"help": "battles a topic needs for its own leaderboard"})
    max_disagreements: int = field(default=25, metadata={
        "help": "reward-model disagreements listed in the report (largest score margins first)"})

    def __post_init__(self) -> None:
        from analytics.errors import AnalyticsError

        if self.judges not in JUDGES:
            raise AnalyticsError(f"judges must be one of {', '.join(JUDGES)}, not {self.judges!r}")
        if self.n_bootstrap < 0:
            raise AnalyticsError("n_bootstrap must be 0 or more")
        if not 0 < self.confidence < 1:
            raise AnalyticsError("confidence must be between 0 and 1")

    @property
    def roles(self) -> tuple[str, ...]:
        """Annotator roles whose judgments count.

        >>> AnalyticsConfig().roles
        ('clinician', 'admin')
        >>> AnalyticsConfig(judges="all").roles
        ('clinician', 'admin', 'source')
        """
        return {"clinicians": CLINICIAN_ROLES, "imported": ("source",),
                "all": (*CLINICIAN_ROLES, "source")}[self.judges]

    @property
    def with_judges(self) -> bool:
        """Whether model judges (``judge:*`` sources) count: only under ``all``, as ``db.rules.source_selected``
        has it; "imported" means datasets, never judges.

        >>> AnalyticsConfig(judges="imported").with_judges, AnalyticsConfig(judges="all").with_judges
        (False, True)
        """
        return self.judges == "all"
