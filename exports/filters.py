"""Filters shared by every export kind, their validation against the database, and the judgment
``WHERE`` clause they translate to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlmodel
from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from db.models import Annotator, CandidateModel, GuidelineVersion, Judgment
from db.rules import JUDGE_PREFIX, Sources
from exports.errors import ExportError


@dataclass
class ExportFilters:
    """Which judgments and replies an export may use (TRL-style config; every field has help)."""

    sources: str = field(default="clinicians", metadata={
        "help": "whose judgments count: clinicians (roles clinician/admin), imported (datasets import:<dataset>), "
                "both, judges (every model judge), all, or annotators by name (judge:NAME, import:DATASET), "
                "comma-separated"})
    min_votes: int = field(default=1, metadata={
        "help": "least number of judgments (after filtering) a comparison or reply needs"})
    min_margin: int = field(default=1, metadata={
        "help": "least difference between winner and loser votes (1 = strict majority)"})
    min_agreement: float = field(default=0.0, metadata={
        "help": "least share of all votes (ties and both-bad included) that went to the winner, 0..1"})
    guideline_version: int | None = field(default=None, metadata={
        "help": "only judgments made under this guideline version", "metavar": "V"})
    candidate_models: tuple[str, ...] = field(default=(), metadata={
        "help": "only replies of these candidate models (names; repeat the flag for several); a pair needs both "
                "replies in the set", "metavar": "NAME"})
    since: datetime | None = field(default=None, metadata={
        "help": "only judgments made at or after this time (ISO date or date-time; UTC without an offset)",
        "metavar": "DATE"})
    until: datetime | None = field(default=None, metadata={
        "help": "only judgments made before this time (ISO date or date-time; UTC without an offset)",
        "metavar": "DATE"})
    exclude_flagged: bool = field(default=False, metadata={
        "help": "drop every item that involves a reply a clinician flagged (flagged replies are never "
                "exported as targets, whatever this says)"})
    not_worse_on: str | None = field(default=None, metadata={
        "help": "a criterion (e.g. safety): never export as the target a reply that the majority of this "
                "criterion's verdicts, among the judgments used, found worse than the other reply of a comparison",
        "metavar": "CRITERION"})

    def __post_init__(self) -> None:
        # Dates may come as ISO text (flags, a manifest's filters); the models as any sequence.
        self.since = parse_when(self.since, name="since") if isinstance(self.since, str) else self.since
        self.until = parse_when(self.until, name="until") if isinstance(self.until, str) else self.until
        self.candidate_models = tuple(self.candidate_models or ())
        Sources.parse(self.sources)  # a bad value fails here, in one line

    def to_json(self) -> dict[str, Any]:
        """The filters as plain JSON values (for manifests and ExportRun.filters).

        >>> ExportFilters(candidate_models=("a",)).to_json()["candidate_models"]
        ['a']
        """
        data = asdict(self)
        data["candidate_models"] = list(self.candidate_models)
        for key in ("since", "until"):
            data[key] = data[key].isoformat() if data[key] else None
        return data

    @property
    def parsed_sources(self) -> Sources:
        """``sources`` parsed (``db.rules.Sources``: the one rule of whose judgments count, with its SQL term).

        >>> ExportFilters(sources="both").parsed_sources.includes("source", "judge:m")
        False
        """
        return Sources.parse(self.sources)


def parse_when(text: str | None, *, name: str = "date") -> datetime | None:
    """An ISO date or date-time, read as UTC when it carries no offset.

    >>> parse_when("2026-01-31")
    datetime.datetime(2026, 1, 31, 0, 0, tzinfo=datetime.timezone.utc)
    >>> parse_when("31/01/2026")
    Traceback (most recent call last):
    ...
    exports.errors.ExportError: --date '31/01/2026' is not an ISO date (YYYY-MM-DD[THH:MM[:SS]])
    """
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(f"--{name} {text!r} is not an ISO date (YYYY-MM-DD[THH:MM[:SS]])") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def check_filters(filters: ExportFilters, *, session: Session) -> None:
    """Reject impossible or unknown filter values with one clear line."""
    for name in sorted(filters.parsed_sources.names):  # a bad --sources value fails here, in one line
        prefix = name.split(":")[0] + ":"
        known = session.exec(sqlmodel.select(Annotator.username).where(
            Annotator.username.startswith(prefix))).all()  # type: ignore[attr-defined]
        if name not in known:
            kind = "judge" if prefix == JUDGE_PREFIX else "dataset"
            raise ExportError(f"--sources: no {kind} named {name!r} (known: {', '.join(sorted(known)) or 'none'})")
    if filters.min_votes < 1:
        raise ExportError("--min-votes must be at least 1")
    if filters.min_margin < 0:
        raise ExportError("--min-margin cannot be negative")
    if not 0.0 <= filters.min_agreement <= 1.0:
        raise ExportError("--min-agreement must lie between 0 and 1")
    if filters.since and filters.until and filters.since >= filters.until:
        raise ExportError("--since must be earlier than --until")
    if filters.guideline_version is not None:
        known = session.exec(sqlmodel.select(GuidelineVersion.version)).all()
        if filters.guideline_version not in known:
            shown = ", ".join(map(str, sorted(known))) or "none"
            raise ExportError(f"unknown guideline version {filters.guideline_version} (known: {shown})")
    if filters.not_worse_on is not None:
        from db.criteria import known_criterion_names

        criteria = known_criterion_names(session=session)
        if filters.not_worse_on not in criteria:
            raise ExportError(f"--not-worse-on: unknown criterion {filters.not_worse_on!r} "
                              f"(known: {', '.join(criteria) or 'none'})")
    if filters.candidate_models:
        known = set(session.exec(sqlmodel.select(CandidateModel.name)).all())
        missing = [name for name in filters.candidate_models if name not in known]
        if missing:
            shown = ", ".join(sorted(known)) or "none"
            raise ExportError(f"unknown candidate model {missing[0]!r} (known: {shown})")


def judgment_conditions(filters: ExportFilters) -> list[ColumnElement[bool]]:
    """``WHERE`` terms on ``judgment`` joined with ``annotator`` for the judgment-level filters."""
    j = Judgment.__table__.c
    terms: list[ColumnElement[bool]] = [filters.parsed_sources.condition()]
    if filters.guideline_version is not None:
        terms.append(j.guideline_version == filters.guideline_version)
    if filters.since is not None:
        terms.append(j.created_at >= filters.since)
    if filters.until is not None:
        terms.append(j.created_at < filters.until)
    return terms


def judgment_filter_counts(conn: Connection, filters: ExportFilters) -> dict[str, int]:
    """How many judgments exist and how many each judgment-level filter removed (one scan over the
    export's read-only connection, inside its transaction, so the counts match the rows exported).

    A judgment removed by several filters is counted under the first: source, guideline, date.
    """
    j, a = Judgment.__table__.c, Annotator.__table__.c
    source_ok = filters.parsed_sources.condition()
    guide_ok = (j.guideline_version == filters.guideline_version) if filters.guideline_version is not None else None
    date_terms = [t for t in (j.created_at >= filters.since if filters.since else None,
                              j.created_at < filters.until if filters.until else None) if t is not None]
    date_ok = and_(*date_terms) if date_terms else None

    def when(cond: ColumnElement[bool]) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    columns = [func.count(), when(~source_ok)]
    columns.append(when(and_(source_ok, ~guide_ok)) if guide_ok is not None else literal(0))
    passed = [source_ok] + ([guide_ok] if guide_ok is not None else [])
    columns.append(when(and_(*passed, ~date_ok)) if date_ok is not None else literal(0))
    row = conn.execute(
        select(*columns).select_from(Judgment.__table__.join(Annotator.__table__, a.id == j.annotator_id))
    ).one()
    total, by_source, by_guideline, by_date = (int(v or 0) for v in row)
    return {"judgments_total": total, "dropped_source": by_source, "dropped_guideline": by_guideline,
            "dropped_date": by_date, "judgments_used": total - by_source - by_guideline - by_date}
