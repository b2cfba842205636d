"""What the database holds: row counts per table, source and candidate (``therapref status``, the
admin's Data page) and a short fingerprint of it for provenance (runs, exports, reports)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, SQLModel, select

from db.models import Annotator, CandidateModel, Judgment, Prompt, Response


def table_counts(*, session: Session) -> dict[str, int]:
    """Rows per table, by table name."""
    counts = {}
    for table in SQLModel.metadata.sorted_tables:
        counts[table.name] = session.exec(select(func.count()).select_from(table)).one()
    return counts


def counts_by_source(*, session: Session) -> dict[str, dict[str, int]]:
    """Prompts per source, and judgments per annotator kind (clinicians vs each imported source)."""
    prompts = dict(session.exec(select(Prompt.source, func.count()).group_by(Prompt.source)).all())
    judgments_rows = session.exec(
        select(Annotator.role, Annotator.username, func.count(Judgment.id))
        .join(Judgment, Judgment.annotator_id == Annotator.id)
        .group_by(Annotator.role, Annotator.username)
    ).all()
    judgments: dict[str, int] = {}
    for role, username, count in judgments_rows:
        key = username if role == "source" else "clinicians"
        judgments[key] = judgments.get(key, 0) + count
    return {"prompts": prompts, "judgments": judgments}


def counts_by_candidate(*, session: Session) -> list[dict[str, Any]]:
    """Replies per candidate model (name, provider, responses), by name."""
    rows = session.exec(
        select(CandidateModel.name, CandidateModel.provider, func.count(Response.id))
        .join(Response, Response.candidate_model_id == CandidateModel.id, isouter=True)
        .group_by(CandidateModel.name, CandidateModel.provider)
        .order_by(CandidateModel.name)
    ).all()
    return [{"name": n, "provider": p, "responses": c} for n, p, c in rows]


def database_fingerprint(*, session: Session) -> str:
    """A short digest of what the database holds (row counts and newest ids) for provenance."""
    state = {}
    for table in SQLModel.metadata.sorted_tables:
        if "id" in table.c and table.name not in ("auditevent", "exportrun", "reservation"):
            state[table.name] = list(session.exec(select(func.count(), func.max(table.c.id))).one())
    payload = json.dumps(state, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]
