"""Password hashing (argon2), creating login accounts and logging in.

Admin operations on accounts (add, activate / deactivate, reset password, each with its audit
event) are in ``db.accounts``; the command line and the app both call those.
"""

from __future__ import annotations

from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import Session, select

from db.errors import TheraPrefError
from db.models import Annotator, utcnow
from db.rules import LOGIN_ROLES

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 8
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
# Verifying against a dummy hash keeps the time of "no such user" equal to "wrong password".
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class AccountError(TheraPrefError, ValueError):
    """A clear, user-facing problem with an account operation."""


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def get_annotator(username: str, *, session: Session) -> Annotator | None:
    return session.exec(select(Annotator).where(Annotator.username == username)).first()


def create_annotator(
    username: str,
    password: str,
    *,
    session: Session,
    role: str = "clinician",
    display_name: str = "",
    credential: str = "",
) -> Annotator:
    username = username.strip()
    if not username or username.startswith("import:"):
        raise AccountError(f"invalid username {username!r}")
    if role not in LOGIN_ROLES:
        raise AccountError(f"role must be {', '.join(LOGIN_ROLES[:-1])} or {LOGIN_ROLES[-1]}, not {role!r}")
    if get_annotator(username, session=session) is not None:
        raise AccountError(f"annotator {username!r} already exists")
    annotator = Annotator(
        username=username,
        display_name=display_name or username,
        role=role,
        credential=credential,
        password_hash=hash_password(password),
    )
    session.add(annotator)
    session.flush()
    return annotator


def set_password(username: str, password: str, *, session: Session) -> Annotator:
    annotator = require_login_account(username, session=session)
    annotator.password_hash = hash_password(password)
    annotator.failed_logins = 0
    annotator.locked_until = None
    session.add(annotator)
    session.flush()
    return annotator


def list_annotators(*, session: Session, include_sources: bool = False) -> list[Annotator]:
    query = select(Annotator).order_by(Annotator.username)
    if not include_sources:
        query = query.where(Annotator.role != "source")
    return list(session.exec(query))


def authenticate(username: str, password: str, *, session: Session) -> Annotator | None:
    """Return the annotator on success; ``None`` on any failure (the caller shows a generic error).

    Repeated failures lock the account for ``LOCKOUT``; a locked account fails even with the
    right password until the lock expires.
    """
    annotator = get_annotator(username.strip(), session=session)
    now = utcnow()
    # Every path verifies one argon2 hash, so that the time taken does not tell an unknown user
    # from a locked, inactive or source account (the hash work dwarfs everything else here).
    can_log_in = annotator is not None and annotator.role != "source" and annotator.is_active
    password_ok = verify_password(annotator.password_hash if can_log_in else None, password)
    if not can_log_in:
        return None
    if annotator.locked_until is not None and annotator.locked_until > now:
        return None
    if not password_ok:
        annotator.failed_logins += 1
        if annotator.failed_logins >= MAX_FAILED_LOGINS:
            annotator.locked_until = now + LOCKOUT
            annotator.failed_logins = 0
        session.add(annotator)
        session.flush()
        return None
    annotator.failed_logins = 0
    annotator.locked_until = None
    annotator.last_login_at = now
    session.add(annotator)
    session.flush()
    return annotator


def is_locked(username: str, *, session: Session) -> bool:
    annotator = get_annotator(username, session=session)
    return bool(annotator and annotator.locked_until and annotator.locked_until > utcnow())


def require_login_account(username: str, *, session: Session) -> Annotator:
    """The clinician, lead or admin account of that name; ``AccountError`` for none (or an imported source)."""
    annotator = get_annotator(username, session=session)
    if annotator is None or annotator.role == "source":
        raise AccountError(f"no annotator named {username!r}")
    return annotator
