"""The analytics settings: one TRL-style dataclass with help text, built at the edge (CLI, app)."""

from __future__ import annotations

from dataclasses import dataclass, field

from db.rules import Sources

#: The choices the admin dashboard offers (``judges`` takes any ``--sources`` value).
JUDGES = ("clinicians", "imported", "all")


@dataclass
class AnalyticsConfig:
    judges: str = field(default="clinicians", metadata={
        "help": "whose judgments count, as --sources elsewhere: clinicians (role clinician/admin), imported "
                "(datasets import:*), both, judges (model judges judge:*), all (everyone), or names "
                "(judge:NAME, import:DATASET); model judges count only under all, judges or by name"})
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

        try:
            Sources.parse(self.judges, option="--judges")
        except ValueError as exc:
            raise AnalyticsError(str(exc)) from None
        if self.n_bootstrap < 0:
            raise AnalyticsError("n_bootstrap must be 0 or more")
        if not 0 < self.confidence < 1:
            raise AnalyticsError("confidence must be between 0 and 1")

    @property
    def sources(self) -> Sources:
        """``judges`` parsed: the one rule of whose judgments count (``db.rules.Sources``); model judges
        (``judge:*``) count only under ``all``, ``judges`` or by name, never as "imported" data.

        >>> AnalyticsConfig(judges="imported").sources.includes("source", "judge:m")
        False
        >>> AnalyticsConfig(judges="all").sources.includes("source", "judge:m")
        True
        """
        return Sources.parse(self.judges)
