"""Account operations of admins: add, activate / deactivate, reset password.

The one write path for both the command line (``therapref annotators …``, actor ``"cli"``) and the
app's *Annotators* page (actor: the signed-in admin). Each operation writes its audit event (who,
what, when) in the caller's transaction; none commits. Password hashing and logging in stay in
``db.auth``.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from db.assignment import release
from db.audit import audit
from db.auth import AccountError, create_annotator, list_annotators, require_login_account, set_password
from db.models import Annotator, AnnotatorIdentity
from db.sso import identity_of


def add_account(username: str, password: str, *, session: Session, actor: str, role: str = "clinician",
                display_name: str = "", credential: str = "") -> Annotator:
    """Create a login account (clinician, lead or admin) with an argon2-hashed password."""
    annotator = create_annotator(username, password, session=session, role=role, display_name=display_name,
                                 credential=credential)
    audit(actor, "annotator.add", session=session, target=annotator.username, details={"role": annotator.role})
    return annotator


def set_account_active(username: str, active: bool, *, session: Session, actor: str) -> Annotator:
    """Let an account log in again, or stop it. Deactivating also hands back the pairs the account
    has reserved, so that they return to the queue at once instead of staying held for someone who
    can no longer log in until the reservations expire. Judgments are kept."""
    annotator = require_login_account(username, session=session)
    annotator.is_active = active
    session.add(annotator)
    session.flush()
    details: dict[str, Any] = {}
    if not active:
        details["released_reservations"] = release(annotator.id, session=session)
    audit(actor, "annotator.activate" if active else "annotator.deactivate", session=session,
          target=annotator.username, details=details)
    return annotator


def reset_account_password(username: str, password: str, *, session: Session, actor: str) -> Annotator:
    """Set a new password; lifts any lockout. Single sign-on accounts have none and get none."""
    if identity_of(require_login_account(username, session=session).id, session=session) is not None:
        raise AccountError(f"{username!r} signs in through single sign-on and has no password here")
    annotator = set_password(username, password, session=session)
    audit(actor, "annotator.reset_password", session=session, target=annotator.username)
    return annotator


def account_rows(*, session: Session) -> list[dict[str, Any]]:
    """Login accounts for the admin table (never the password hash); ``sign_in``: password or sso."""
    sso = set(session.exec(select(AnnotatorIdentity.annotator_id)))
    return [
        {"username": a.username, "display_name": a.display_name, "role": a.role, "credential": a.credential,
         "sign_in": "sso" if a.id in sso else "password",
         "active": a.is_active, "locked_until": a.locked_until, "last_login_at": a.last_login_at,
         "created_at": a.created_at}
        for a in list_annotators(session=session)
    ]


__all__ = ["add_account", "set_account_active", "reset_account_password", "account_rows"]
