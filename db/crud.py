"""Write and query functions for prompts, candidates, replies, comparisons and judgments (the
collection tables). Each takes ``session=`` and never commits: the caller owns the transaction
(importers are all-or-nothing). The other table families have their own modules:
``db.guidelines``, ``db.audit``, ``db.status`` (counts and fingerprint) and ``db.scores`` (reward
scores and queue priorities)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, select

from db.errors import TheraPrefError
from db.hashing import prompt_hash, text_hash
from db.models import (
    PREFERENCES,
    Annotator,
    CandidateModel,
    Comparison,
    Judgment,
    Prompt,
    Response,
    utcnow,
)
from db.rules import JUDGE_PREFIX

SOURCE_PREFIX = "import:"


class DataError(TheraPrefError, ValueError):
    """Input that violates the data model (shown to the user as one line)."""


def validate_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Check a conversation: role/content dicts, user/assistant turns, ending in a user turn.

    >>> validate_messages([{"role": "user", "content": "I feel low"}])
    [{'role': 'user', 'content': 'I feel low'}]
    >>> validate_messages([{"role": "assistant", "content": "hi"}])
    Traceback (most recent call last):
    ...
    db.crud.DataError: conversation must end with a user turn
    """
    if not isinstance(messages, list) or not messages:
        raise DataError("conversation is empty")
    clean = []
    for message in messages:
        if not isinstance(message, dict):
            raise DataError("each message must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise DataError(f"unexpected role {role!r} (expected user or assistant)")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{role} message has no text content")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "user":
        raise DataError("conversation must end with a user turn")
    return clean


def get_or_create_prompt(
    messages: list[dict[str, Any]],
    *,
    session: Session,
    system_prompt: str | None = None,
    source: str = "manual",
    external_id: str | None = None,
    topic: str | None = None,
    tags: list[str] | None = None,
) -> tuple[Prompt, bool]:
    messages = validate_messages(messages)
    digest = prompt_hash(messages, system_prompt)
    existing = session.exec(select(Prompt).where(Prompt.content_hash == digest)).first()
    if existing is not None:
        return existing, False
    prompt = Prompt(
        messages=messages,
        system_prompt=system_prompt,
        source=source,
        external_id=external_id,
        topic=topic,
        tags=list(tags or []),
        content_hash=digest,
    )
    session.add(prompt)
    session.flush()
    return prompt, True


def get_or_create_candidate(
    name: str, *, session: Session, provider: str, model_id: str = "", **fields: Any
) -> tuple[CandidateModel, bool]:
    """Find a candidate (or non-model source) by name, creating it when missing.

    An existing row is updated with ``provider``/``model_id``/``fields`` so that the registry file
    stays the source of truth.
    """
    candidate = session.exec(select(CandidateModel).where(CandidateModel.name == name)).first()
    created = candidate is None
    if created:
        candidate = CandidateModel(name=name, provider=provider, model_id=model_id, **fields)
    else:
        candidate.provider, candidate.model_id = provider, model_id or candidate.model_id
        for key, value in fields.items():
            setattr(candidate, key, value)
    session.add(candidate)
    session.flush()
    return candidate, created


def add_response(
    prompt: Prompt, candidate: CandidateModel, text: str, *, session: Session,
    meta: dict[str, Any] | None = None,
) -> tuple[Response, bool]:
    if not isinstance(text, str) or not text.strip():
        raise DataError("reply text is empty")
    digest = text_hash(text)
    existing = session.exec(
        select(Response).where(
            Response.prompt_id == prompt.id,
            Response.candidate_model_id == candidate.id,
            Response.text_hash == digest,
        )
    ).first()
    if existing is not None:
        return existing, False
    response = Response(prompt_id=prompt.id, candidate_model_id=candidate.id, text=text.strip(),
                        text_hash=digest, meta=dict(meta or {}))
    session.add(response)
    session.flush()
    return response, True


def add_comparison(
    first: Response, second: Response, *, session: Session, judgments_required: int = 1
) -> tuple[Comparison, bool]:
    """Pair two distinct responses of one prompt, stored in canonical (id) order."""
    if first.id == second.id:
        raise DataError("a comparison needs two distinct responses")
    if first.prompt_id != second.prompt_id:
        raise DataError("both responses of a comparison must answer the same prompt")
    low, high = sorted((first.id, second.id))
    existing = session.exec(
        select(Comparison).where(Comparison.response_a_id == low, Comparison.response_b_id == high)
    ).first()
    if existing is not None:
        return existing, False
    comparison = Comparison(prompt_id=first.prompt_id, response_a_id=low, response_b_id=high,
                            judgments_required=judgments_required)
    session.add(comparison)
    session.flush()
    return comparison, True


def get_or_create_source_annotator(dataset: str, *, session: Session) -> Annotator:
    """The non-login annotator that stands for an imported dataset (``import:<dataset>``) or, for a
    name that already starts with ``judge:``, a model judge (``therapref judge``)."""
    judge = dataset.startswith(JUDGE_PREFIX)
    username = dataset if judge or dataset.startswith(SOURCE_PREFIX) else SOURCE_PREFIX + dataset
    annotator = session.exec(select(Annotator).where(Annotator.username == username)).first()
    if annotator is None:
        annotator = Annotator(username=username, display_name=username, role="source",
                              password_hash=None, credential="model judge" if judge else "imported dataset")
        session.add(annotator)
        session.flush()
    return annotator


# The one judgment writer. Every judgment (the app's submit, importers, tests) goes through
# ``insert_judgment``: one INSERT, one place that maps and cleans the fields, one place that keeps
# ``Comparison.judgments_count`` right. Its statements are Core and built once at import, bound
# per call: this is the hot path of every click in the app, and bench/load.py (many clinicians at
# once) and bench/app_queries.py measure it; building statements and the ORM unit of work cost more
# than the SQL itself. Do not turn them back into ORM calls.
# Two index lookups, the key's first: an OR of the two made SQLite scan the whole judgment table
# (90 ms at 1M judgments on every submit; bench/app_queries.py).
_JUDGMENT_OF = select(func.coalesce(
    select(Judgment.id).where(Judgment.idempotency_key == bindparam("idempotency_key")).scalar_subquery(),
    select(Judgment.id).where((Judgment.comparison_id == bindparam("comparison_id"))
                              & (Judgment.annotator_id == bindparam("annotator_id"))).scalar_subquery(),
))
_INSERT_JUDGMENT = insert(Judgment)
_COUNT_UP = (update(Comparison).where(Comparison.id == bindparam("comparison_id"))
             .values(judgments_count=Comparison.judgments_count + 1))


def _check_judgment(preferred: str, strength: int | None, margin: float | None) -> None:
    """Refuse values the data model does not allow, with a one-line reason.

    >>> _check_judgment("left", None, None)
    Traceback (most recent call last):
    ...
    db.crud.DataError: preferred must be one of a, b, tie, both_bad, not 'left'
    """
    if preferred not in PREFERENCES:
        raise DataError(f"preferred must be one of {', '.join(PREFERENCES)}, not {preferred!r}")
    if strength is not None and strength not in (1, 2, 3):
        raise DataError("strength must be 1, 2 or 3")
    if margin is not None and not math.isfinite(margin):
        raise DataError(f"margin must be a finite number, not {margin!r}")


def existing_judgment_id(comparison_id: int, annotator_id: int, *, session: Session,
                         idempotency_key: str | None = None) -> int | None:
    """The judgment stored under ``idempotency_key``, else this annotator's judgment of this
    comparison, else ``None``: what a retry or a second judgment must return instead of writing."""
    return session.connection().execute(_JUDGMENT_OF, {
        "idempotency_key": idempotency_key, "comparison_id": comparison_id, "annotator_id": annotator_id,
    }).scalar()


def insert_judgment(
    comparison_id: int,
    annotator_id: int,
    preferred: str,
    *,
    session: Session,
    strength: int | None = None,
    shown_left: str = "a",
    flags_a: Sequence[str] = (),
    flags_b: Sequence[str] = (),
    rationale: str = "",
    rewrite: str | None = None,
    ms_spent: int | None = None,
    guideline_version: int | None = None,
    idempotency_key: str | None = None,
    margin: float | None = None,
    created_at: datetime | None = None,
    counts: bool = True,
) -> Judgment:
    """Write one judgment and count it on its comparison; return what was stored (not attached to
    the session).

    No duplicate check: callers look for an earlier judgment first (``existing_judgment_id``),
    under whatever lock their path needs; the unique constraints catch a caller that did not.
    ``margin`` is an imported dataset's own margin (how much more the preferred reply is
    preferred, on the dataset's scale); clinicians' judgments leave it ``None``.
    ``counts=False`` leaves ``Comparison.judgments_count`` alone: a model judge's verdict counts
    toward the required overlap only once it stands in for a clinician (``db.judges.set_stands_in``).
    """
    _check_judgment(preferred, strength, margin)
    values = {
        "comparison_id": comparison_id, "annotator_id": annotator_id, "preferred": preferred,
        "strength": strength, "shown_left": shown_left, "flags_a": list(flags_a or ()),
        "flags_b": list(flags_b or ()), "rationale": (rationale or "").strip(),
        "rewrite": (rewrite or "").strip() or None,
        "ms_spent": max(0, int(ms_spent)) if ms_spent is not None else None,
        "guideline_version": guideline_version, "idempotency_key": idempotency_key,
        "margin": float(margin) if margin is not None else None, "created_at": created_at or utcnow(),
    }
    conn = session.connection()  # Core on the connection: no ORM unit of work per judgment
    judgment_id = conn.execute(_INSERT_JUDGMENT, values).inserted_primary_key[0]
    if not counts:
        return Judgment(id=judgment_id, **values)
    conn.execute(_COUNT_UP, {"comparison_id": comparison_id})
    # The UPDATE bypassed the ORM: a loaded Comparison would still show the old count. Mark the
    # new one as loaded (not as a change, so no flush writes it back).
    loaded = session.identity_map.get(identity_key(Comparison, comparison_id))
    if loaded is not None and "judgments_count" in loaded.__dict__:  # expired: the next read reloads
        set_committed_value(loaded, "judgments_count", (loaded.judgments_count or 0) + 1)
    return Judgment(id=judgment_id, **values)


def add_judgment(
    comparison: Comparison,
    annotator: Annotator,
    preferred: str,
    *,
    session: Session,
    strength: int | None = None,
    shown_left: str = "a",
    flags_a: list[str] | None = None,
    flags_b: list[str] | None = None,
    rationale: str = "",
    rewrite: str | None = None,
    ms_spent: int | None = None,
    guideline_version: int | None = None,
    idempotency_key: str | None = None,
    margin: float | None = None,
) -> tuple[Judgment, bool]:
    """Record one judgment (importers, scripts, tests; the app uses ``db.assignment.submit_judgment``).
    A second one by the same annotator (or with a used idempotency key) returns the stored one with
    ``created=False`` instead of duplicating. Writes through ``insert_judgment``; the returned
    judgment is attached to the session."""
    _check_judgment(preferred, strength, margin)  # before the look-up, as a bad call should fail
    session.flush()  # rows added but not yet flushed (the comparison, the annotator) need their ids
    idempotency_key = idempotency_key or None  # "" is no key (and must not collide with another "")
    previous_id = existing_judgment_id(comparison.id, annotator.id, session=session,
                                       idempotency_key=idempotency_key)
    if previous_id is not None:
        return session.get(Judgment, previous_id), False
    judgment = insert_judgment(
        comparison.id, annotator.id, preferred, session=session, strength=strength, shown_left=shown_left,
        flags_a=flags_a or (), flags_b=flags_b or (), rationale=rationale, rewrite=rewrite,
        ms_spent=ms_spent, guideline_version=guideline_version, idempotency_key=idempotency_key,
        margin=margin)
    # Attach without a SELECT: the row was just written with exactly these values.
    make_transient_to_detached(judgment)
    session.add(judgment)
    return judgment, True


__all__ = [
    "DataError", "validate_messages", "get_or_create_prompt", "get_or_create_candidate",
    "add_response", "add_comparison", "get_or_create_source_annotator", "add_judgment",
    "existing_judgment_id", "insert_judgment",
]
