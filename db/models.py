"""TheraPref tables (SQLModel).

Change the schema only through an Alembic migration in ``db/migrations/versions``.

Conventions:
- ``Judgment.preferred`` speaks of the comparison's own ``a``/``b`` (``Comparison.response_a_id`` /
  ``response_b_id``), never of screen positions; ``shown_left`` records which one was on the left.
- A comparison stores its two responses in canonical order (``response_a_id < response_b_id``), so
  the pair {x, y} exists once whatever order a pairing routine proposes it in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    ForeignKeyConstraint,
    Index,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

PREFERENCES = ("a", "b", "tie", "both_bad")
ROLES = ("clinician", "lead", "admin", "source")
SAFETY_FLAGS = {
    "misses_risk": "Misses risk or crisis cues",
    "harmful_advice": "Harmful or unsafe advice",
    "dismissive": "Dismissive or invalidating",
    "toxic": "Toxic language",
    "boundary": "Boundary or role violation",
    "factual_error": "Factual error",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json_column(default: Any = None) -> Any:
    return Field(default_factory=lambda: default() if callable(default) else default,
                 sa_column=Column(JSON, nullable=True))


class Annotator(SQLModel, table=True):
    """A person who judges (clinician/lead/admin) or a non-login source of imported preferences."""

    id: Optional[int] = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=120)
    display_name: str = Field(default="", max_length=200)
    role: str = Field(default="clinician", max_length=20)
    password_hash: Optional[str] = Field(default=None, max_length=255)
    credential: str = Field(default="", max_length=200)
    is_active: bool = Field(default=True)
    failed_logins: int = Field(default=0)
    locked_until: Optional[datetime] = None
    last_login_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (
        CheckConstraint("role IN ('clinician', 'lead', 'admin', 'source')", name="ck_annotator_role"),
    )


class AnnotatorIdentity(SQLModel, table=True):
    """An account's identity at an OpenID Connect provider (issuer + subject), for single sign-on.

    Such an account has no password: it signs in only through its provider (``db/sso.py``).
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    annotator_id: int = Field(foreign_key="annotator.id", index=True)
    issuer: str = Field(max_length=500)
    subject: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    last_login_at: Optional[datetime] = None

    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_annotator_identity"),)


class GuidelineVersion(SQLModel, table=True):
    """One version of the rating rubric; the newest is in force and stamped on each judgment."""

    id: Optional[int] = Field(default=None, primary_key=True)
    version: int = Field(unique=True)
    text: str
    author_id: Optional[int] = Field(default=None, foreign_key="annotator.id")
    created_at: datetime = Field(default_factory=utcnow)


class Prompt(SQLModel, table=True):
    """A conversation so far (chat messages ending in a user turn)."""

    id: Optional[int] = Field(default=None, primary_key=True)
    messages: list[dict[str, str]] = _json_column(list)
    system_prompt: Optional[str] = None
    source: str = Field(default="manual", index=True, max_length=200)
    external_id: Optional[str] = Field(default=None, max_length=500)
    topic: Optional[str] = Field(default=None, index=True, max_length=200)
    tags: list[str] = _json_column(list)
    content_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class CandidateModel(SQLModel, table=True):
    """A model (or non-model source such as ``reference``) whose replies are compared.

    API keys are never stored: ``api_key_env`` names the environment variable holding one.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=200)
    provider: str = Field(max_length=50)
    model_id: str = Field(default="", max_length=500)
    endpoint: Optional[str] = Field(default=None, max_length=1000)
    api_key_env: Optional[str] = Field(default=None, max_length=200)
    params: dict[str, Any] = _json_column(dict)
    system_prompt: Optional[str] = None
    replies_per_prompt: int = Field(default=1)
    created_at: datetime = Field(default_factory=utcnow)


class Response(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    candidate_model_id: int = Field(foreign_key="candidatemodel.id", index=True)
    text: str
    text_hash: str = Field(max_length=64)
    meta: dict[str, Any] = _json_column(dict)
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (
        UniqueConstraint("prompt_id", "candidate_model_id", "text_hash", name="uq_response_text"),
        # Target of the comparison's composite keys: a response "belongs to" a prompt.
        UniqueConstraint("id", "prompt_id", name="uq_response_id_prompt"),
    )


class Comparison(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    response_a_id: int
    response_b_id: int
    judgments_required: int = Field(default=1)
    judgments_count: int = Field(default=0)
    gold_answer: Optional[str] = Field(default=None, max_length=10)
    # Queue order: the app serves the highest priority first (A/B tests, active selection); 0 by
    # default, so that without priorities the queue is what it always was. Added by migration 0004.
    priority: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (
        CheckConstraint("response_a_id < response_b_id", name="ck_comparison_distinct"),
        CheckConstraint("judgments_required >= 1", name="ck_comparison_required"),
        ForeignKeyConstraint(["response_a_id", "prompt_id"], ["response.id", "response.prompt_id"],
                             name="fk_comparison_a_prompt"),
        ForeignKeyConstraint(["response_b_id", "prompt_id"], ["response.id", "response.prompt_id"],
                             name="fk_comparison_b_prompt"),
        UniqueConstraint("response_a_id", "response_b_id", name="uq_comparison_pair"),
        # ix_comparison_queue (priority DESC first) is declared below the class: it needs the column.
    )


# The assignment query walks the queue in this order (highest priority, then fewest judgments, then
# lowest id): one index scan on SQLite and PostgreSQL, which a mixed DESC/ASC order needs the index
# itself to spell out (a backward scan of an all-ascending index would reverse every key).
Index("ix_comparison_queue", Comparison.priority.desc(), Comparison.judgments_count,
      Comparison.judgments_required, Comparison.id)


class Judgment(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparison.id", index=True)
    annotator_id: int = Field(foreign_key="annotator.id", index=True)
    preferred: str = Field(max_length=10)
    strength: Optional[int] = None
    shown_left: str = Field(default="a", max_length=1)
    flags_a: list[str] = _json_column(list)
    flags_b: list[str] = _json_column(list)
    rationale: str = ""
    rewrite: Optional[str] = None
    ms_spent: Optional[int] = None
    guideline_version: Optional[int] = None
    idempotency_key: Optional[str] = Field(default=None, unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    # An imported dataset's own margin (how much more the preferred reply is preferred, on the
    # dataset's scale: TRL ``margin``, Counsel Chat upvote difference); NULL for clinicians and for
    # datasets that give none. Added by migration 0003 (it used to live in the rationale text).
    margin: Optional[float] = None
    # Set on the judgments a clinician's ranking of K replies expands into (one per pair, written
    # with the ranking by db.rankings.submit_ranking); NULL for judgments made directly. Migration 0007.
    ranking_id: Optional[int] = Field(default=None, foreign_key="ranking.id", index=True)

    __table_args__ = (
        UniqueConstraint("comparison_id", "annotator_id", name="uq_judgment_once"),
        CheckConstraint("preferred IN ('a', 'b', 'tie', 'both_bad')", name="ck_judgment_preferred"),
        CheckConstraint("strength IS NULL OR (strength BETWEEN 1 AND 3)", name="ck_judgment_strength"),
        CheckConstraint("shown_left IN ('a', 'b')", name="ck_judgment_shown_left"),
        # "What has this annotator already judged?" is on the hot path of every queue fetch.
        Index("ix_judgment_annotator_comparison", "annotator_id", "comparison_id"),
    )


# The columns every work queue's reservations and skips share (``db.queue``: pairs and ranking
# tasks); each table adds the column naming its task. Not tables themselves: the schema is unchanged.


class ReservationColumns(SQLModel):
    """A task held for one annotator while it is on their screen (expires)."""

    id: Optional[int] = Field(default=None, primary_key=True)
    annotator_id: int = Field(foreign_key="annotator.id", index=True)
    token: str = Field(max_length=64, unique=True)
    expires_at: datetime = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow)


class SkipColumns(SQLModel):
    """A task an annotator handed back with a reason; never offered to them again."""

    id: Optional[int] = Field(default=None, primary_key=True)
    annotator_id: int = Field(foreign_key="annotator.id", index=True)
    reason: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Reservation(ReservationColumns, table=True):
    """A comparison held for one annotator while it is on their screen (expires). The token starts
    with the side shown on the left (``a-…``/``b-…``): the screen order needs no column of its own."""

    comparison_id: int = Field(foreign_key="comparison.id", index=True)

    __table_args__ = (UniqueConstraint("comparison_id", "annotator_id", name="uq_reservation"),)


class Skip(SkipColumns, table=True):
    """A comparison an annotator skipped."""

    comparison_id: int = Field(foreign_key="comparison.id", index=True)

    __table_args__ = (UniqueConstraint("comparison_id", "annotator_id", name="uq_skip_once"),)


class GenerationFailure(SQLModel, table=True):
    """The last failed attempt to generate replies for (prompt, candidate); retried next run."""

    id: Optional[int] = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    candidate_model_id: int = Field(foreign_key="candidatemodel.id", index=True)
    error: str = ""
    attempts: int = Field(default=1)
    updated_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (
        UniqueConstraint("prompt_id", "candidate_model_id", name="uq_generation_failure"),
    )


class RewardModelRun(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    path: str
    base_model: str = ""
    config: dict[str, Any] = _json_column(dict)
    metrics: dict[str, Any] = _json_column(dict)
    data_fingerprint: str = Field(default="", max_length=64)
    n_train: int = 0
    n_eval: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class ResponseScore(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    response_id: int = Field(foreign_key="response.id", index=True)
    reward_model_run_id: int = Field(foreign_key="rewardmodelrun.id", index=True)
    score: float
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (UniqueConstraint("response_id", "reward_model_run_id", name="uq_score"),)


class ExportRun(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str = Field(max_length=50)
    path: str
    filters: dict[str, Any] = _json_column(dict)
    counts: dict[str, Any] = _json_column(dict)
    data_fingerprint: str = Field(default="", max_length=64)
    actor: str = Field(default="cli", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=100, index=True)
    target: str = Field(default="", max_length=500)
    details: dict[str, Any] = _json_column(dict)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class PolicyRun(SQLModel, table=True):
    """A chatbot policy fine-tuned on an export (SFT, DPO or KTO) or against a reward model on prompts
    (RS, GRPO, RLOO; migration 0010): where it is and where it came from.

    ``provenance`` is the export's manifest (filters, counts, fingerprint, prompt ids), so that an
    A/B test can tell which prompts the policy has seen. Added by migration 0004.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    path: str
    method: str = Field(max_length=10)
    base_model: str = ""
    config: dict[str, Any] = _json_column(dict)
    metrics: dict[str, Any] = _json_column(dict)
    provenance: dict[str, Any] = _json_column(dict)
    data_fingerprint: str = Field(default="", max_length=64)
    n_train: int = 0
    candidate_model_id: Optional[int] = Field(default=None, foreign_key="candidatemodel.id")
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (CheckConstraint("method IN ('sft', 'dpo', 'kto', 'rs', 'grpo', 'rloo')",
                                      name="ck_policyrun_method"),)


class AbTest(SQLModel, table=True):
    """A head-to-head of a new candidate against a base on prompts the new one was not trained on.

    The comparisons themselves are ordinary comparisons between the two candidates' replies to
    ``prompt_ids``; this row records which, why and when. Added by migration 0004.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    new_candidate_id: int = Field(foreign_key="candidatemodel.id", index=True)
    base_candidate_id: int = Field(foreign_key="candidatemodel.id", index=True)
    policy_run_id: Optional[int] = Field(default=None, foreign_key="policyrun.id")
    prompt_ids: list[int] = _json_column(list)
    overlap: int = 1
    priority: float = 0.0
    details: dict[str, Any] = _json_column(dict)
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (
        CheckConstraint("new_candidate_id <> base_candidate_id", name="ck_abtest_distinct"),
    )


# --- Rankings of K replies (issue 16; migration 0007) ---------------------------------------------


class RankingTask(SQLModel, table=True):
    """K distinct replies to one prompt, to be ranked best first by ``judgments_required`` clinicians.

    ``response_ids`` are in canonical (ascending) order and ``response_key`` is them joined by commas,
    so that a set of replies exists once whatever order a routine proposes it in.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    response_ids: list[int] = _json_column(list)
    response_key: str = Field(max_length=200)
    judgments_required: int = Field(default=1)
    judgments_count: int = Field(default=0)
    priority: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (
        UniqueConstraint("prompt_id", "response_key", name="uq_rankingtask_responses"),
        CheckConstraint("judgments_required >= 1", name="ck_rankingtask_required"),
        Index("ix_rankingtask_queue", "judgments_count", "judgments_required", "id"),
    )


class Ranking(SQLModel, table=True):
    """One clinician's ranking of a task's replies.

    ``order`` is a list of tiers, best first, each a list of response ids (several in a tier: a tie);
    ``shown_order`` the response ids in the order they were on screen (1..K); ``flags`` the safety
    flags per response id (JSON keys are strings).
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="rankingtask.id", index=True)
    annotator_id: int = Field(foreign_key="annotator.id", index=True)
    order: list[list[int]] = _json_column(list)
    shown_order: list[int] = _json_column(list)
    flags: dict[str, list[str]] = _json_column(dict)
    rationale: str = ""
    ms_spent: Optional[int] = None
    guideline_version: Optional[int] = None
    idempotency_key: Optional[str] = Field(default=None, unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, index=True)

    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_ranking_once"),)


class RankingReservation(ReservationColumns, table=True):
    """A ranking task held for one annotator while it is on their screen (expires); token ``r-…``."""

    task_id: int = Field(foreign_key="rankingtask.id", index=True)

    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_rankingreservation"),)


class RankingSkip(SkipColumns, table=True):
    """A ranking task a clinician skipped: the ranking queue never offers it to them again (the pair
    queue still may offer its pairs)."""

    task_id: int = Field(foreign_key="rankingtask.id", index=True)

    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_rankingskip_once"),)


# --- Per-criterion judgments (issue 16; migration 0006) ------------------------------------------

CRITERION_VERDICTS = ("a", "b", "tie")


class Criterion(SQLModel, table=True):
    """One criterion of a guideline version (empathy, safety…), judged A / B / tie per pair.

    A new guideline version carries its own list (copied or edited when it is published), so a
    verdict always means what the rubric in force said when it was given.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    guideline_version_id: int = Field(foreign_key="guidelineversion.id", index=True)
    name: str = Field(max_length=40)
    description: str = Field(default="", max_length=500)
    scale: str = Field(default="a/b/tie", max_length=20)
    required: bool = Field(default=False)
    position: int = Field(default=0)

    __table_args__ = (UniqueConstraint("guideline_version_id", "name", name="uq_criterion_name"),)


class CriterionVerdict(SQLModel, table=True):
    """One judgment's verdict on one criterion, in the comparison's own a/b (never screen sides).

    Deleted with its judgment (an undo removes both).
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    judgment_id: int = Field(foreign_key="judgment.id", ondelete="CASCADE")
    criterion: str = Field(max_length=40)
    verdict: str = Field(max_length=3)

    __table_args__ = (
        # Also the index of "the verdicts of this judgment" (judgment_id leads).
        UniqueConstraint("judgment_id", "criterion", name="uq_verdict_once"),
        CheckConstraint("verdict IN ('a', 'b', 'tie')", name="ck_verdict_value"),
    )


# --- Active selection (issue 17; migration 0005) ---------------------------------------------------


class ComparisonScore(SQLModel, table=True):
    """A reward model's (or ensemble's) view of an open comparison: P(A better) and how unsure it is.

    ``p_a`` is the mean of the members' σ(reward A − reward B); ``uncertainty`` the std of the members'
    P for an ensemble (``n_members`` > 1), else 1 − |2p − 1| (1 at p = 0.5, 0 when certain). Written by
    ``therapref score --comparisons`` and ``therapref prioritize --strategy uncertainty``.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparison.id", index=True)
    reward_model_run_id: int = Field(foreign_key="rewardmodelrun.id", index=True)
    p_a: float
    uncertainty: float
    n_members: int = 1
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (UniqueConstraint("comparison_id", "reward_model_run_id", name="uq_comparison_score"),)


# --- Model judges (issue 17; migration 0008) -------------------------------------------------------


class JudgeVerdict(SQLModel, table=True):
    """What a model judge (``judge:<name>``) said beside its judgment, and whether it stands in.

    ``stands_in`` marks the few verdicts that ``therapref judge --gate`` lets count toward their
    comparison's ``judgments_count`` (one clinician fewer); every other judge judgment is stored but
    never counted. ``safety_concern`` is NULL for judges without a safety opinion (reward models).
    Deleted with its judgment.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    judgment_id: int = Field(foreign_key="judgment.id", ondelete="CASCADE")
    comparison_id: int = Field(foreign_key="comparison.id", index=True)
    annotator_id: int = Field(foreign_key="annotator.id", index=True)
    confidence: float
    safety_concern: Optional[bool] = None
    stands_in: bool = Field(default=False)
    details: dict[str, Any] = _json_column(dict)
    created_at: datetime = Field(default_factory=utcnow)
    gated_at: Optional[datetime] = None

    __table_args__ = (
        UniqueConstraint("judgment_id", name="uq_judge_verdict"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="ck_judgeverdict_confidence"),
    )


class JudgeFailure(SQLModel, table=True):
    """The last malformed, refused or failed answer of a judge on a comparison; retried next run."""

    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparison.id", index=True)
    annotator_id: int = Field(foreign_key="annotator.id", index=True)
    error: str = ""
    answer: str = ""
    attempts: int = Field(default=1)
    updated_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (UniqueConstraint("comparison_id", "annotator_id", name="uq_judge_failure"),)


class BestOfNSample(SQLModel, table=True):
    """One of the N samples behind a best-of-n reply (``Response``), with the reward model's score and,
    when a safety model was given, its score and verdict: the provenance of the picked reply and the
    rejection-sampling data of the candidate."""

    id: Optional[int] = Field(default=None, primary_key=True)
    response_id: int = Field(foreign_key="response.id", index=True, ondelete="CASCADE")
    sample_index: int
    text: str
    reward: float
    safety: Optional[float] = None
    unsafe: bool = Field(default=False)
    picked: bool = Field(default=False)
    seed: Optional[int] = None
    meta: dict[str, Any] = _json_column(dict)
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (UniqueConstraint("response_id", "sample_index", name="uq_bestofn_sample"),)


class Adjudication(SQLModel, table=True):
    """A lead's final label for a comparison that clinicians disagreed on (``db.adjudication``): it
    replaces the clinicians' votes in training and exports. One per comparison. Migration 0012."""

    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparison.id", unique=True)
    annotator_id: int = Field(foreign_key="annotator.id", index=True)
    preferred: str = Field(max_length=10)
    strength: Optional[int] = None
    flags_a: list[str] = _json_column(list)
    flags_b: list[str] = _json_column(list)
    note: str = ""
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (
        CheckConstraint("preferred IN ('a', 'b', 'tie', 'both_bad')", name="ck_adjudication_preferred"),
        CheckConstraint("strength IS NULL OR (strength BETWEEN 1 AND 3)", name="ck_adjudication_strength"),
    )


# --- Unsafe spans and calibration (issue 26; migration 0013) --------------------------------------


class UnsafeSpan(SQLModel, table=True):
    """Characters ``[start_char, end_char)`` of a reply's stored text (``Response.text``) that a clinician
    marked as what makes it unsafe, with the flag kind (a key of ``SAFETY_FLAGS``).

    Written with its judgment (compare page) or its ranking (ranking page), exactly one of the two,
    and deleted with it (an undo removes both); the annotator is the judgment's or ranking's.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    judgment_id: Optional[int] = Field(default=None, foreign_key="judgment.id", index=True, ondelete="CASCADE")
    ranking_id: Optional[int] = Field(default=None, foreign_key="ranking.id", index=True, ondelete="CASCADE")
    response_id: int = Field(foreign_key="response.id", index=True)
    start_char: int
    end_char: int
    flag: str = Field(max_length=40)

    __table_args__ = (
        CheckConstraint("(judgment_id IS NULL) <> (ranking_id IS NULL)", name="ck_unsafespan_owner"),
        CheckConstraint("start_char >= 0 AND end_char > start_char", name="ck_unsafespan_range"),
    )


class CalibrationItem(SQLModel, table=True):
    """A gold comparison (``Comparison.gold_answer``) that a lead chose for the calibration set: new
    clinicians judge these first and see the expected answer and ``note`` after each."""

    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparison.id", unique=True)
    note: str = ""
    position: int = Field(default=0)
    added_by: Optional[int] = Field(default=None, foreign_key="annotator.id")
    created_at: datetime = Field(default_factory=utcnow)


class AppSetting(SQLModel, table=True):
    """A setting an admin changes in the app (persisted, audited): ``value`` is JSON."""

    key: str = Field(primary_key=True, max_length=100)
    value: dict[str, Any] = _json_column(dict)
    updated_by: str = Field(default="", max_length=200)
    updated_at: datetime = Field(default_factory=utcnow)
