"""The audit trail: one ``AuditEvent`` row per admin action, import, export or training run.
Takes ``session=`` and never commits, so the event lands in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from db.models import AuditEvent


def audit(actor: str, action: str, *, session: Session, target: str = "",
          details: dict[str, Any] | None = None) -> AuditEvent:
    """Record that ``actor`` did ``action`` (to ``target``); ``details`` must hold no secret."""
    event = AuditEvent(actor=actor, action=action, target=target, details=dict(details or {}))
    session.add(event)
    session.flush()
    return event
