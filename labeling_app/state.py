"""What every page shares: settings, the engine, the signed-in user, sessions, inert text.

Settings are read once per browser session at the app edge (``app.py``): ``--db URL`` after ``--``
on the ``streamlit run`` line, else env ``THERAPREF_DATABASE_URL``, else ``therapref.toml``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import streamlit as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from db.engine import make_engine, read_only_engine, session_scope
from therapref.settings import Settings, SettingsError

SETTINGS_KEY = "_therapref_settings"
USER_KEY = "_therapref_user"
SEEN_KEY = "_therapref_last_seen"
FLASH_KEY = "_therapref_flash"
#: Compare page: assignment token -> the opaque id its widget keys carry (the token never reaches the page).
SCREEN_IDS_KEY = "_therapref_screen_ids"
LOGIN_ERROR = "Login failed: wrong username or password, or the account is locked or inactive."


@dataclass(frozen=True)
class User:
    id: int
    username: str
    display_name: str
    role: str
    via_sso: bool = False  # signed in through the OIDC provider (logging out signs out there too)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def may_adjudicate(self) -> bool:
        """Leads and admins see the adjudication queue (``db.adjudication.ADJUDICATOR_ROLES``)."""
        from db.adjudication import ADJUDICATOR_ROLES

        return self.role in ADJUDICATOR_ROLES


@st.cache_resource(show_spinner=False)
def get_engine(database_url: str, writer_queue: bool = True) -> Engine:
    """One engine per database URL and process, migrated to the newest schema, rubric in place."""
    from db.assignment import ensure_guidelines
    from db.migrate import upgrade

    engine = make_engine(database_url, writer_queue=writer_queue)
    upgrade(engine)
    with session_scope(engine) as session:
        ensure_guidelines(session=session)
    return engine


def load_settings(argv: list[str]) -> Settings:
    """Settings for this session (once), from ``--db URL`` in argv or the environment."""
    if SETTINGS_KEY not in st.session_state:
        database_url = None
        if "--db" in argv and argv.index("--db") + 1 < len(argv):
            database_url = argv[argv.index("--db") + 1]
        try:
            st.session_state[SETTINGS_KEY] = Settings.load({"database_url": database_url})
        except SettingsError as exc:
            st.error(md_escape(str(exc)))
            st.stop()
    return st.session_state[SETTINGS_KEY]


def settings() -> Settings:
    if SETTINGS_KEY not in st.session_state:
        return load_settings([])
    return st.session_state[SETTINGS_KEY]


def engine() -> Engine:
    current = settings()
    return get_engine(current.database_url, current.sqlite_writer_queue)


@contextmanager
def write_session() -> Iterator[Session]:
    """One short write transaction."""
    with session_scope(engine()) as session:
        yield session


@contextmanager
def read_session() -> Iterator[Session]:
    """A read transaction that never takes SQLite's write lock."""
    with session_scope(read_only_engine(engine())) as session:
        yield session


def current_user() -> User | None:
    return st.session_state.get(USER_KEY)


def sign_in(user: User) -> None:
    st.session_state[USER_KEY] = user
    st.session_state[SEEN_KEY] = time.time()


def sign_out(message: str | None = None) -> None:
    """Forget everything this browser session knew, except the settings."""
    keep = {SETTINGS_KEY: st.session_state.get(SETTINGS_KEY)}
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    for key, value in keep.items():
        if value is not None:
            st.session_state[key] = value
    if message:
        flash("info", message)


def touch_session(timeout_minutes: float) -> bool:
    """Record activity; sign out and return False when the session sat idle too long."""
    if current_user() is None:
        return False
    now = time.time()
    if now - st.session_state.get(SEEN_KEY, now) > timeout_minutes * 60:
        from db.assignment import release

        user = current_user()
        with write_session() as session:
            release(user.id, session=session)
        sign_out("Your session timed out. Please log in again.")
        if user.via_sso:  # else the provider's identity cookie would sign the browser straight back in
            st.logout()
        return False
    st.session_state[SEEN_KEY] = now
    return True


def _logout() -> None:
    from db.assignment import release
    from db.audit import audit

    user = current_user()
    if user is not None:
        with write_session() as session:
            release(user.id, session=session)
            audit(user.username, "auth.logout", session=session, target=user.username)
    sign_out("You are logged out.")
    if user is not None and user.via_sso:
        st.logout()


def callback_user() -> User | None:
    """The user for a widget callback, or None if the session has been idle too long.

    Callbacks run before the script (and so before ``touch_session``): a click on a screen left
    open past the timeout must not write anything.
    """
    user = current_user()
    seen = st.session_state.get(SEEN_KEY)
    if user is None or (seen is not None and time.time() - seen > settings().session_timeout_minutes * 60):
        return None
    return user


def require_user() -> User:
    """The signed-in user, or stop the page (defence in depth: the router already hides pages).

    Also draws the account box in the sidebar (who is signed in, log out)."""
    user = current_user()
    if user is None:
        st.error("Please log in.")
        st.stop()
    with st.sidebar:
        st.text(f"Signed in as {user.display_name or user.username} ({user.role})")
        st.button("Log out", key="logout", on_click=_logout, icon=":material/logout:")
    return user


def require_admin() -> User:
    user = require_user()
    if not user.is_admin:
        st.error("This page is for admins only.")
        st.stop()
    return user


def require_adjudicator() -> User:
    """The signed-in lead or admin, or stop the page (the router already hides it from others)."""
    user = require_user()
    if not user.may_adjudicate:
        st.error("This page is for leads and admins only.")
        st.stop()
    return user


def flash(kind: str, text: str) -> None:
    """Queue a message for the next run of the page (used from widget callbacks)."""
    st.session_state.setdefault(FLASH_KEY, []).append((kind, text))


def show_flash() -> None:
    for kind, text in st.session_state.pop(FLASH_KEY, []):
        getattr(st, kind)(text)


def md_escape(text: str) -> str:
    r"""Escape text for Streamlit's Markdown elements (st.success, st.error…): no links, emphasis,
    HTML or LaTeX from names someone typed.

    >>> md_escape("[x](javascript:alert(1)) *bold* <b> $x$")
    '\\[x\\]\\(javascript\\:alert\\(1\\)\\) \\*bold\\* &lt;b&gt; \\$x\\$'
    """
    escaped = "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!|~$:" else ch for ch in str(text))
    return escaped.replace("<", "&lt;").replace(">", "&gt;")


def inert_text(text: str) -> None:
    """Untrusted text (prompts, replies): no HTML, no Markdown, line breaks kept."""
    st.text(text or "")
