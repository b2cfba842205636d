"""Streaming reads for exports. Votes are aggregated per comparison in SQL, rows are fetched in
batches (server-side cursor on PostgreSQL, a lazy cursor on SQLite), so memory does not grow with
the number of judgments."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, case, cast, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from db.models import (
    Adjudication,
    Annotator,
    CandidateModel,
    Comparison,
    CriterionVerdict,
    Judgment,
    Prompt,
    Ranking,
    Response,
    UnsafeSpan,
)
from db.rules import CLINICIAN_ROLES
from exports.filters import ExportFilters, judgment_conditions

BATCH = 2000
# Core tables rather than ORM classes: rows stream as plain tuples, without building model objects.
JUDGMENTS, ANNOTATORS, COMPARISONS = Judgment.__table__, Annotator.__table__, Comparison.__table__
VERDICTS, ADJUDICATIONS = CriterionVerdict.__table__, Adjudication.__table__
PROMPTS, RESPONSES, CANDIDATES = Prompt.__table__, Response.__table__, CandidateModel.__table__
SPANS, RANKINGS = UnsafeSpan.__table__, Ranking.__table__


@dataclass(frozen=True)
class Votes:
    """Votes on one comparison (its own a/b) after the judgment filters."""

    a: int = 0
    b: int = 0
    tie: int = 0
    both_bad: int = 0

    @property
    def total(self) -> int:
        return self.a + self.b + self.tie + self.both_bad


@dataclass(frozen=True)
class PairRow:
    comparison_id: int
    prompt_id: int
    messages: list[dict[str, str]]
    system_prompt: str | None
    a_id: int
    a_text: str
    a_model: str
    b_id: int
    b_text: str
    b_model: str
    votes: Votes
    #: ``--not-worse-on``: that criterion's verdicts (a/b/tie) among the judgments used; empty otherwise.
    criterion_votes: Votes = Votes()


def _stream(conn: Connection, stmt: Any) -> Iterator[Any]:
    result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(stmt)
    try:
        for batch in result.partitions(BATCH):  # fetchmany: one round trip per batch
            yield from batch
    finally:
        result.close()


def _nonempty_json_list(column: Any) -> Any:
    text = cast(column, String)
    return and_(column.isnot(None), text.notin_(["[]", "null", ""]))


def _judged_by() -> Any:
    """judgment ⋈ annotator: the join every judgment filter needs (roles live on the annotator)."""
    return JUDGMENTS.join(ANNOTATORS, ANNOTATORS.c.id == JUDGMENTS.c.annotator_id)


def _judged_comparisons() -> Any:
    """judgment ⋈ annotator ⋈ comparison."""
    return _judged_by().join(COMPARISONS, COMPARISONS.c.id == JUDGMENTS.c.comparison_id)


def _replies_with_candidate() -> Any:
    """response ⋈ candidate model."""
    return RESPONSES.join(CANDIDATES, CANDIDATES.c.id == RESPONSES.c.candidate_model_id)


def _vote_columns() -> list[Any]:
    pref = JUDGMENTS.c.preferred
    return [func.sum(case((pref == value, 1), else_=0)).label(f"v_{value}")
            for value in ("a", "b", "tie", "both_bad")]


@dataclass(frozen=True)
class Ruling:
    """A lead's final label on one comparison (``db.adjudication``): it replaces the votes."""

    comparison_id: int
    a_id: int
    b_id: int
    preferred: str


def rulings(conn: Connection) -> dict[int, Ruling]:
    """Every adjudication by comparison id (one row per adjudicated comparison: few, held in memory)."""
    stmt = (select(ADJUDICATIONS.c.comparison_id, COMPARISONS.c.response_a_id, COMPARISONS.c.response_b_id,
                   ADJUDICATIONS.c.preferred)
            .select_from(ADJUDICATIONS.join(COMPARISONS, COMPARISONS.c.id == ADJUDICATIONS.c.comparison_id)))
    return {row[0]: Ruling(row[0], row[1], row[2], row[3]) for row in _stream(conn, stmt)}


def flagged_response_ids(conn: Connection, *, adjudicated: bool = False) -> set[int]:
    """Replies any clinician (or lead, or admin) flagged unsafe, in any comparison, whatever the filters.
    ``adjudicated``: on an adjudicated comparison the lead's flags replace the clinicians' flags.

    The set grows with the number of flagged replies, not with the number of judgments.
    """
    flagged: set[int] = set()
    base = _judged_comparisons()
    terms = [ANNOTATORS.c.role.in_(CLINICIAN_ROLES)]
    if adjudicated:
        terms.append(JUDGMENTS.c.comparison_id.notin_(select(ADJUDICATIONS.c.comparison_id)))
    ruled = ADJUDICATIONS.join(COMPARISONS, COMPARISONS.c.id == ADJUDICATIONS.c.comparison_id)
    for column, flags, lead_flags in ((COMPARISONS.c.response_a_id, JUDGMENTS.c.flags_a, ADJUDICATIONS.c.flags_a),
                                      (COMPARISONS.c.response_b_id, JUDGMENTS.c.flags_b, ADJUDICATIONS.c.flags_b)):
        stmt = select(column).distinct().select_from(base).where(*terms, _nonempty_json_list(flags))
        flagged.update(row[0] for row in _stream(conn, stmt))
        if adjudicated:
            stmt = select(column).distinct().select_from(ruled).where(_nonempty_json_list(lead_flags))
            flagged.update(row[0] for row in _stream(conn, stmt))
    return flagged


def _with_verdicts(joined: Any, criterion: str) -> Any:
    """``joined`` (judgments …) ⋈ left their verdict on ``criterion``: at most one per judgment, so no
    judgment row is repeated and the vote counts stay as they are."""
    return joined.outerjoin(VERDICTS, and_(VERDICTS.c.judgment_id == JUDGMENTS.c.id, VERDICTS.c.criterion == criterion))


def _verdict_columns() -> list[Any]:
    return [func.sum(case((VERDICTS.c.verdict == value, 1), else_=0)).label(f"c_{value}")
            for value in ("a", "b", "tie")]


def criterion_losers(conn: Connection, filters: ExportFilters) -> set[int]:
    """``--not-worse-on``: replies that the strict plurality of the criterion's verdicts (among the
    judgments passing the filters) found worse than the other reply of some comparison. Grows with the
    number of such replies, not of judgments."""
    from exports.select import worse_on_criterion

    losers: set[int] = set()
    if filters.not_worse_on is None:
        return losers
    stmt = (
        select(COMPARISONS.c.response_a_id, COMPARISONS.c.response_b_id, *_verdict_columns())
        .select_from(_with_verdicts(_judged_comparisons(), filters.not_worse_on))
        .where(*judgment_conditions(filters), VERDICTS.c.id.isnot(None))
        .group_by(COMPARISONS.c.id, COMPARISONS.c.response_a_id, COMPARISONS.c.response_b_id)
    )
    for a_id, b_id, c_a, c_b, c_tie in _stream(conn, stmt):
        verdicts = Votes(int(c_a), int(c_b), int(c_tie))
        if worse_on_criterion(verdicts, "a"):
            losers.add(a_id)
        elif worse_on_criterion(verdicts, "b"):
            losers.add(b_id)
    return losers


def count_comparisons(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(COMPARISONS)).scalar_one())


def iter_pairs(conn: Connection, filters: ExportFilters) -> Iterator[PairRow]:
    """Every comparison with at least one judgment passing the filters, with its votes and texts,
    in comparison id order."""
    criterion = filters.not_worse_on
    agg = (
        select(JUDGMENTS.c.comparison_id, *_vote_columns(), *(_verdict_columns() if criterion else []))
        .select_from(_with_verdicts(_judged_by(), criterion) if criterion else _judged_by())
        .where(*judgment_conditions(filters))
        .group_by(JUDGMENTS.c.comparison_id)
        .subquery("agg")
    )
    response_a, response_b = aliased(RESPONSES), aliased(RESPONSES)
    model_a, model_b = aliased(CANDIDATES), aliased(CANDIDATES)
    stmt = (
        select(agg.c.comparison_id, COMPARISONS.c.prompt_id, PROMPTS.c.messages, PROMPTS.c.system_prompt,
               response_a.c.id, response_a.c.text, model_a.c.name,
               response_b.c.id, response_b.c.text, model_b.c.name,
               agg.c.v_a, agg.c.v_b, agg.c.v_tie, agg.c.v_both_bad,
               *((agg.c.c_a, agg.c.c_b, agg.c.c_tie) if criterion else ()))
        .select_from(
            agg.join(COMPARISONS, COMPARISONS.c.id == agg.c.comparison_id)
            .join(PROMPTS, PROMPTS.c.id == COMPARISONS.c.prompt_id)
            .join(response_a, response_a.c.id == COMPARISONS.c.response_a_id)
            .join(model_a, model_a.c.id == response_a.c.candidate_model_id)
            .join(response_b, response_b.c.id == COMPARISONS.c.response_b_id)
            .join(model_b, model_b.c.id == response_b.c.candidate_model_id)
        )
        .order_by(agg.c.comparison_id)
    )
    for row in _stream(conn, stmt):
        yield PairRow(row[0], row[1], row[2] or [], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                      Votes(int(row[10]), int(row[11]), int(row[12]), int(row[13])),
                      Votes(int(row[14]), int(row[15]), int(row[16])) if criterion else Votes())


def iter_prompts(conn: Connection) -> Iterator[tuple[int, list[dict[str, str]], str | None]]:
    stmt = select(PROMPTS.c.id, PROMPTS.c.messages, PROMPTS.c.system_prompt).order_by(PROMPTS.c.id)
    for row in _stream(conn, stmt):
        yield row[0], row[1] or [], row[2]


def count_prompts(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(PROMPTS)).scalar_one())


def prompt_responses(conn: Connection, prompt_id: int) -> list[tuple[int, str, str]]:
    """(response id, text, candidate name) of one prompt's replies."""
    stmt = (select(RESPONSES.c.id, RESPONSES.c.text, CANDIDATES.c.name).select_from(_replies_with_candidate())
            .where(RESPONSES.c.prompt_id == prompt_id).order_by(RESPONSES.c.id))
    return [(row[0], row[1], row[2]) for row in conn.execute(stmt)]


def prompt_comparisons(conn: Connection, prompt_id: int, filters: ExportFilters) -> list[tuple[int, int, Votes]]:
    """(response a id, response b id, votes) for one prompt's judged comparisons."""
    stmt = (
        select(COMPARISONS.c.response_a_id, COMPARISONS.c.response_b_id, *_vote_columns())
        .select_from(_judged_comparisons())
        .where(COMPARISONS.c.prompt_id == prompt_id, *judgment_conditions(filters))
        .group_by(COMPARISONS.c.id, COMPARISONS.c.response_a_id, COMPARISONS.c.response_b_id)
        .order_by(COMPARISONS.c.id)
    )
    return [(row[0], row[1], Votes(*(int(v) for v in row[2:]))) for row in conn.execute(stmt)]


def prompt_ids_by_hash(conn: Connection, hashes: list[str]) -> dict[str, int]:
    """Content hash → prompt id for the stored prompts among ``hashes`` (the importers' identity)."""
    found: dict[str, int] = {}
    for start in range(0, len(hashes), BATCH):
        chunk = hashes[start:start + BATCH]
        stmt = select(PROMPTS.c.content_hash, PROMPTS.c.id).where(PROMPTS.c.content_hash.in_(chunk))
        found.update((row[0], row[1]) for row in conn.execute(stmt))
    return found


def prompt_judgments(conn: Connection, prompt_id: int, filters: ExportFilters) -> list[tuple[int, int]]:
    """(comparison id, judgment id) of the judgments on one prompt's comparisons that pass the
    filters: the judgments behind a choice, for manifests."""
    stmt = (
        select(COMPARISONS.c.id, JUDGMENTS.c.id)
        .select_from(_judged_comparisons())
        .where(COMPARISONS.c.prompt_id == prompt_id, *judgment_conditions(filters))
        .order_by(COMPARISONS.c.id, JUDGMENTS.c.id)
    )
    return [(row[0], row[1]) for row in conn.execute(stmt)]


def prompt_rewrite(conn: Connection, prompt_id: int, filters: ExportFilters) -> str | None:
    """The newest clinician rewrite among the prompt's judgments that pass the filters."""
    if not filters.parsed_sources.clinicians:  # rewrites are clinicians' only
        return None
    stmt = (
        select(JUDGMENTS.c.rewrite)
        .select_from(_judged_comparisons())
        .where(COMPARISONS.c.prompt_id == prompt_id, ANNOTATORS.c.role.in_(CLINICIAN_ROLES),
               JUDGMENTS.c.rewrite.isnot(None), JUDGMENTS.c.rewrite != "", *judgment_conditions(filters))
        .order_by(JUDGMENTS.c.created_at.desc(), JUDGMENTS.c.id.desc())
        .limit(1)
    )
    value = conn.execute(stmt).scalar_one_or_none()
    return value.strip() if value and value.strip() else None


def iter_candidate_replies(conn: Connection, candidate: str) -> Iterator[tuple[int, int, list, str | None, str]]:
    """(response id, prompt id, messages, system prompt, text) of every reply of one candidate, in
    the order they were stored (import order)."""
    stmt = (
        select(RESPONSES.c.id, PROMPTS.c.id, PROMPTS.c.messages, PROMPTS.c.system_prompt, RESPONSES.c.text)
        .select_from(_replies_with_candidate().join(PROMPTS, PROMPTS.c.id == RESPONSES.c.prompt_id))
        .where(CANDIDATES.c.name == candidate)
        .order_by(RESPONSES.c.id)
    )
    for row in _stream(conn, stmt):
        yield row[0], row[1], row[2] or [], row[3], row[4]


def count_candidate_replies(conn: Connection, candidate: str) -> int:
    stmt = (select(func.count()).select_from(_replies_with_candidate())
            .where(CANDIDATES.c.name == candidate))
    return int(conn.execute(stmt).scalar_one())


@dataclass(frozen=True)
class SpanRow:
    """One stored unsafe span with its reply, the prompt it answers, and who marked it."""

    response_id: int
    start: int
    end: int
    flag: str
    annotator_id: int
    judgment_id: int | None
    ranking_id: int | None
    text: str
    prompt_id: int
    messages: list[dict[str, str]]
    system_prompt: str | None
    model: str


def _span_conditions(filters: ExportFilters, created: Any, guideline: Any) -> list[Any]:
    """The judgment-level filters, on a span's judgment or ranking (``created``/``guideline``: theirs)."""
    terms = [filters.parsed_sources.condition()]
    if filters.guideline_version is not None:
        terms.append(guideline == filters.guideline_version)
    if filters.since is not None:
        terms.append(created >= filters.since)
    if filters.until is not None:
        terms.append(created < filters.until)
    if filters.candidate_models:
        terms.append(CANDIDATES.c.name.in_(list(filters.candidate_models)))
    return terms


def count_span_replies(conn: Connection) -> int:
    """Replies with at least one unsafe span (whoever marked it)."""
    return int(conn.execute(select(func.count(func.distinct(SPANS.c.response_id)))).scalar_one())


def iter_spans(conn: Connection, filters: ExportFilters) -> Iterator[SpanRow]:
    """Every unsafe span whose judgment or ranking passes the judgment-level filters (sources,
    guideline version, dates) on a reply of the wanted candidates, by reply then offset."""
    owner = func.coalesce(JUDGMENTS.c.annotator_id, RANKINGS.c.annotator_id)
    created = func.coalesce(JUDGMENTS.c.created_at, RANKINGS.c.created_at)
    guideline = func.coalesce(JUDGMENTS.c.guideline_version, RANKINGS.c.guideline_version)
    stmt = (
        select(SPANS.c.response_id, SPANS.c.start_char, SPANS.c.end_char, SPANS.c.flag, owner, SPANS.c.judgment_id,
               SPANS.c.ranking_id, RESPONSES.c.text, PROMPTS.c.id, PROMPTS.c.messages, PROMPTS.c.system_prompt,
               CANDIDATES.c.name)
        .select_from(
            SPANS.outerjoin(JUDGMENTS, JUDGMENTS.c.id == SPANS.c.judgment_id)
            .outerjoin(RANKINGS, RANKINGS.c.id == SPANS.c.ranking_id)
            .join(ANNOTATORS, ANNOTATORS.c.id == owner)
            .join(RESPONSES, RESPONSES.c.id == SPANS.c.response_id)
            .join(CANDIDATES, CANDIDATES.c.id == RESPONSES.c.candidate_model_id)
            .join(PROMPTS, PROMPTS.c.id == RESPONSES.c.prompt_id))
        .where(*_span_conditions(filters, created, guideline))
        .order_by(SPANS.c.response_id, SPANS.c.start_char, SPANS.c.end_char, SPANS.c.id)
    )
    for row in _stream(conn, stmt):
        yield SpanRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9] or [],
                      row[10], row[11])


__all__ = ["Votes", "PairRow", "Ruling", "rulings", "flagged_response_ids", "iter_pairs", "iter_prompts",
           "prompt_responses", "prompt_comparisons", "prompt_rewrite", "iter_candidate_replies", "prompt_ids_by_hash",
           "prompt_judgments", "SpanRow", "iter_spans", "count_span_replies"]
