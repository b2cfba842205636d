"""The audit trail: one ``AuditEvent`` row per admin action, import, export or training run.

``audit`` writes one; it takes ``session=`` and never commits, so the event lands in the caller's
transaction. The rest reads them for the admins' *Audit log* page: filter events (who, what, when,
target) and write them as CSV. No event carries a password, token or secret (writers never put
one in), and ``redact`` drops any details key that names one all the same, so that a careless
writer cannot leak one through the page or the CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from db.models import AuditEvent

#: A details key naming any of these is dropped from what the page and the CSV show.
SECRET_WORDS = ("password", "passwd", "token", "secret", "api_key", "cookie")
COLUMNS = ("created_at", "actor", "action", "target", "details")


@dataclass(frozen=True)
class AuditFilter:
    """What the admin asked for; empty means "any". Dates are UTC days, both ends included."""

    actors: Sequence[str] = ()
    actions: Sequence[str] = ()
    since: date | None = None
    until: date | None = None
    target: str = ""
    limit: int = 10_000


def audit(actor: str, action: str, *, session: Session, target: str = "",
          details: dict[str, Any] | None = None) -> AuditEvent:
    """Record that ``actor`` did ``action`` (to ``target``); ``details`` must hold no secret."""
    event = AuditEvent(actor=actor, action=action, target=target, details=dict(details or {}))
    session.add(event)
    session.flush()
    return event


def redact(details: Mapping[str, Any]) -> dict[str, Any]:
    """Details without keys that name a password, token or secret (nested too).

    >>> redact({"role": "admin", "password": "x", "nested": {"access_token": "y", "n": 1}})
    {'role': 'admin', 'nested': {'n': 1}}
    """
    return {k: redact(v) if isinstance(v, Mapping) else v for k, v in details.items()
            if not any(word in str(k).lower() for word in SECRET_WORDS)}


def audit_events(filters: AuditFilter = AuditFilter(), *, session: Session) -> list[dict[str, Any]]:
    """Matching events, newest first, as plain rows (``details`` redacted)."""
    query = select(AuditEvent).order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
    if filters.actors:
        query = query.where(AuditEvent.actor.in_(list(filters.actors)))
    if filters.actions:
        query = query.where(AuditEvent.action.in_(list(filters.actions)))
    if filters.since is not None:
        query = query.where(AuditEvent.created_at >= datetime.combine(filters.since, time(), UTC))
    if filters.until is not None:
        query = query.where(AuditEvent.created_at < datetime.combine(filters.until + timedelta(days=1), time(), UTC))
    if filters.target.strip():
        query = query.where(func.lower(AuditEvent.target).contains(filters.target.strip().lower(), autoescape=True))
    return [{"created_at": e.created_at, "actor": e.actor, "action": e.action, "target": e.target,
             "details": redact(e.details or {})} for e in session.exec(query.limit(filters.limit))]


def audit_choices(*, session: Session) -> tuple[list[str], list[str]]:
    """Everyone who appears as an actor, and every action, for the page's filters."""
    actors = sorted(session.exec(select(AuditEvent.actor).distinct()))
    actions = sorted(session.exec(select(AuditEvent.action).distinct()))
    return actors, actions


def _cell(value: Any) -> str:
    r"""A CSV cell a spreadsheet shows as text: a leading ``= + - @`` (a formula) gets a quote.

    >>> _cell("=HYPERLINK(\"http://x\")"), _cell("dr.lee"), _cell({"a": 1})
    ('\'=HYPERLINK("http://x")', 'dr.lee', '{"a": 1}')
    """
    if isinstance(value, datetime):
        text = value.astimezone(UTC).isoformat(timespec="seconds")
    elif isinstance(value, Mapping):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def audit_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as CSV (UTC ISO times, details as JSON).

    >>> print(audit_csv([{"created_at": datetime(2026, 1, 2, tzinfo=UTC), "actor": "cli", "action": "a",
    ...                   "target": "t", "details": {}}]).strip())
    created_at,actor,action,target,details
    2026-01-02T00:00:00+00:00,cli,a,t,{}
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in COLUMNS])
    return out.getvalue()


__all__ = ["audit", "AuditFilter", "audit_events", "audit_choices", "audit_csv", "redact"]
