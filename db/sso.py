"""Single sign-on (OpenID Connect): an ID token's claims to a TheraPref account.

The app hands in the claims of an ID token that Streamlit's ``st.login`` (Authlib) has already
verified (signature against the provider's keys, issuer, audience, nonce, expiry). This module
decides who that is here: the account of the identity (issuer + subject), created at the first
sign-in without a password; its role from the mapped claim at every sign-in (a person whose claim
no longer maps is refused, and so is a deactivated account). Every outcome is an audit event in the
caller's transaction; nothing commits. The claims themselves and any token are never stored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, select

from db.audit import audit
from db.auth import AccountError, get_annotator
from db.errors import TheraPrefError
from db.models import Annotator, AnnotatorIdentity, utcnow
from db.rules import JUDGE_PREFIX, LOGIN_ROLES

#: Seconds of clock skew allowed on ``exp`` (Authlib allows the same at the callback).
LEEWAY_SECONDS = 120
#: What a refused person reads, per reason (the audit event keeps the reason).
REFUSALS = {
    "no_role": "Your account at the identity provider has no role in TheraPref. Ask your admin to add you "
               "to a group that is mapped to clinician or admin.",
    "inactive": "Your TheraPref account is deactivated. Ask your admin.",
    "username_taken": "An account with your username already exists here and is not linked to your sign-in. "
                      "Ask your admin.",
    "bad_claims": "The identity provider did not say who you are (issuer, subject or a usable username).",
    "issuer": "This sign-in comes from another identity provider than the one configured.",
    "expired": "Your sign-in has expired. Sign in again.",
}


class SsoConfigError(TheraPrefError, ValueError):
    """A role mapping that names a role TheraPref does not have."""


class SsoRefused(AccountError):
    """Signing in through the provider was refused; ``reason`` is a key of ``REFUSALS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(REFUSALS[reason])
        self.reason = reason


@dataclass(frozen=True)
class RoleMapping:
    """Values of one claim (``groups``, ``roles``, ``realm_access.roles``) → a login role.

    >>> m = RoleMapping("groups", {"therapists": "clinician", "it-admins": "admin"})
    >>> m.role_for({"groups": ["therapists"]}), m.role_for({"groups": ["therapists", "it-admins"]})
    ('clinician', 'admin')
    >>> m.role_for({"groups": ["visitors"]}) is None, m.role_for({}) is None
    (True, True)
    >>> RoleMapping("realm_access.roles", {"t": "clinician"}).role_for({"realm_access": {"roles": "t"}})
    'clinician'
    >>> RoleMapping("groups", {"x": "superuser"})
    Traceback (most recent call last):
    ...
    db.sso.SsoConfigError: roles.x: unknown role 'superuser' (known: clinician, lead, admin)
    """

    claim: str
    roles: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for value, role in self.roles.items():
            if role not in LOGIN_ROLES:
                raise SsoConfigError(f"roles.{value}: unknown role {role!r} (known: {', '.join(LOGIN_ROLES)})")

    def role_for(self, claims: Mapping[str, Any]) -> str | None:
        """The most privileged role that any of the claim's values maps to; None when none does."""
        mapped = {self.roles[v] for v in claim_values(claims, self.claim) if v in self.roles}
        return max(mapped, key=LOGIN_ROLES.index) if mapped else None


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """A claim's values as strings (a list, or one string), following a dotted path into objects.

    >>> claim_values({"groups": ["a", "b", 3]}, "groups"), claim_values({"a": {"b": "x"}}, "a.b")
    (['a', 'b', '3'], ['x'])
    >>> claim_values({"groups": None}, "groups"), claim_values({"a": "x"}, "a.b")
    ([], [])
    """
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return []
        value = value.get(part)
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [str(v) for v in value if isinstance(v, (str, int))]
    return []


def username_from_claims(claims: Mapping[str, Any], username_claim: str = "preferred_username") -> str | None:
    """The name a new account gets: the configured claim, else ``email``, else ``sub``; None when
    none is usable (empty, too long, or shaped like an imported source or a model judge).

    >>> username_from_claims({"preferred_username": " dr.lee ", "sub": "1"}), username_from_claims({"sub": "42"})
    ('dr.lee', '42')
    >>> username_from_claims({"preferred_username": "import:hh", "sub": "judge:x"}) is None
    True
    """
    for key in (username_claim, "email", "sub"):
        name = str(claims.get(key) or "").strip()
        if name:
            return name if len(name) <= 120 and not name.startswith(("import:", JUDGE_PREFIX)) else None
    return None


def identity_of(annotator_id: int, *, session: Session) -> AnnotatorIdentity | None:
    """The provider identity of an account (None for a password account)."""
    return session.exec(select(AnnotatorIdentity).where(AnnotatorIdentity.annotator_id == annotator_id)).first()


def sso_sign_in(claims: Mapping[str, Any], *, issuer: str, mapping: RoleMapping, session: Session,
                username_claim: str = "preferred_username", now: float | None = None) -> Annotator:
    """The account for verified ID-token ``claims``; ``SsoRefused`` (audited) when it may not sign in.

    ``issuer`` is the configured one: claims from any other are refused. An ``exp`` in the past
    (beyond ``LEEWAY_SECONDS``) is refused too, so a stale identity cookie never signs anyone in.
    """
    iss, subject = str(claims.get("iss") or "").rstrip("/"), str(claims.get("sub") or "")
    username = username_from_claims(claims, username_claim)
    try:
        if not iss or not subject:
            raise SsoRefused("bad_claims")
        if iss != issuer.rstrip("/"):
            raise SsoRefused("issuer")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp + LEEWAY_SECONDS < (time.time() if now is None else now):
            raise SsoRefused("expired")
        role = mapping.role_for(claims)
        identity = session.exec(select(AnnotatorIdentity).where(
            AnnotatorIdentity.issuer == iss, AnnotatorIdentity.subject == subject)).first()
        annotator = session.get(Annotator, identity.annotator_id) if identity else None
        if annotator is not None:
            username = annotator.username
            if not annotator.is_active:
                raise SsoRefused("inactive")
        if role is None:
            raise SsoRefused("no_role")
        if annotator is None:
            annotator, identity = _create(claims, username, role, iss, subject, session=session)
        elif annotator.role != role:
            audit(annotator.username, "annotator.role", session=session, target=annotator.username,
                  details={"from": annotator.role, "to": role, "via": "sso"})
            annotator.role = role
    except SsoRefused as refused:
        audit((username or "?")[:200], "auth.login_failed", session=session, target=(username or "")[:200],
              details={"method": "sso", "reason": refused.reason})
        raise
    annotator.last_login_at = identity.last_login_at = utcnow()
    session.add_all([annotator, identity])
    session.flush()
    audit(annotator.username, "auth.login", session=session, target=annotator.username,
          details={"method": "sso", "role": role})
    return annotator


def _create(claims: Mapping[str, Any], username: str | None, role: str, issuer: str, subject: str, *,
            session: Session) -> tuple[Annotator, AnnotatorIdentity]:
    if username is None:
        raise SsoRefused("bad_claims")
    if get_annotator(username, session=session) is not None:
        raise SsoRefused("username_taken")
    display_name = str(claims.get("name") or "").strip()[:200] or username
    annotator = Annotator(username=username, display_name=display_name, role=role, password_hash=None)
    session.add(annotator)
    session.flush()
    identity = AnnotatorIdentity(annotator_id=annotator.id, issuer=issuer, subject=subject)
    session.add(identity)
    session.flush()
    audit(username, "annotator.add", session=session, target=username, details={"role": role, "via": "sso"})
    return annotator, identity


__all__ = ["RoleMapping", "SsoConfigError", "SsoRefused", "REFUSALS", "claim_values", "username_from_claims",
           "identity_of", "sso_sign_in"]
