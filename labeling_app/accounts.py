"""Admin actions on accounts, each recorded as an audit event (who, what, when). No streamlit here."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from db.assignment import release
from db.auth import create_annotator, list_annotators, set_active, set_password
from db.crud import audit


def add_account(actor: str, username: str, password: str, *, session: Session, role: str = "clinician",
                display_name: str = "", credential: str = "") -> str:
    annotator = create_annotator(username, password, session=session, role=role, display_name=display_name,
                                 credential=credential)
    audit(actor, "annotator.add", session=session, target=annotator.username, details={"role": role})
    return annotator.username


def set_account_active(actor: str, username: str, active: bool, *, session: Session) -> None:
    annotator = set_active(username, active, session=session)
    if not active:
        release(annotator.id, session=session)
    audit(actor, "annotator.activate" if active else "annotator.deactivate", session=session, target=username)


def reset_account_password(actor: str, username: str, password: str, *, session: Session) -> None:
    set_password(username, password, session=session)
    audit(actor, "annotator.reset_password", session=session, target=username)


def account_rows(*, session: Session) -> list[dict[str, Any]]:
    """Login accounts for the admin table (never the password hash)."""
    return [
        {"username": a.username, "display_name": a.display_name, "role": a.role, "credential": a.credential,
         "active": a.is_active, "locked_until": a.locked_until, "last_login_at": a.last_login_at,
         "created_at": a.created_at}
        for a in list_annotators(session=session)
    ]
