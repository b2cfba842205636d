"""What the two queue pages (compare: pairs, rank: ranking tasks) share: the start of each panel run,
the opaque screen id of the work on screen, how long it has been shown, the submit and skip
callbacks with their one-line messages, and the skip row. The library behind them is one work queue
(``db.queue``); each page names its own library calls and widget keys.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st
from sqlmodel import Session

from db.assignment import SKIP_REASONS, AssignmentError
from labeling_app import state
from labeling_app.state import User
from therapref.settings import Settings


def start_panel() -> tuple[User, Settings]:
    """The signed-in user and the settings for one run of a page's panel; flashed messages shown.

    A session idle past the timeout is signed out and the whole app redraws as the login page."""
    settings = state.settings()
    if not state.touch_session(settings.session_timeout_minutes):
        st.rerun()
    state.show_flash()
    return state.current_user(), settings


@dataclass(frozen=True)
class QueuePage:
    """One queue page: ``noun`` for its messages, ``prefix`` of its skip row's widget keys, the
    session keys of its screen ids and shown-at times, the library's ``skip`` for its work, the errors
    that mean "someone else has it now: move on" and ``clear`` (given the screen id) for whatever
    else the page keeps about the work on screen."""

    noun: str
    prefix: str
    screen_ids_key: str
    shown_at_key: str
    skip: Callable[..., Any]
    moved_on: tuple[type[Exception], ...]
    clear: Callable[[str], None] | None = None

    def screen_id(self, token: str) -> str:
        """An opaque id for the work on screen, used in widget keys (and so in the page's DOM).

        The assignment token stays on the server: a pair's token starts with the side shown on the
        left, and a key in the page must not tell which reply is the comparison's canonical ``a``."""
        ids = st.session_state.setdefault(self.screen_ids_key, {})
        if token not in ids:
            ids.clear()  # one piece of work on screen at a time; earlier ids are never needed again
            ids[token] = secrets.token_hex(8)
        return ids[token]

    def shown(self, token: str) -> None:
        """Note when the work under ``token`` was first shown (a rerun keeps the first time)."""
        st.session_state.setdefault(self.shown_at_key, {}).setdefault(token, time.time())

    def _ms_spent(self, token: str) -> int | None:
        shown_at = st.session_state.get(self.shown_at_key, {}).get(token)
        return int((time.time() - shown_at) * 1000) if shown_at else None

    def _forget(self, token: str, screen: str) -> None:
        st.session_state.get(self.shown_at_key, {}).pop(token, None)
        if self.clear is not None:
            self.clear(screen)

    def submit(self, token: str, screen: str, write: Callable[[Session, User, int | None], tuple[Any, bool]]) -> bool:
        """Run ``write(session, user, ms_spent)`` (the library's submit, returning ``(row, created)``)
        in one write transaction and flash the outcome; True when it was stored."""
        user = state.callback_user()
        if user is None:
            return False
        try:
            with state.write_session() as session:
                _stored, created = write(session, user, self._ms_spent(token))
        except self.moved_on as exc:
            self._forget(token, screen)
            state.flash("info", f"Moved on: {exc}.")
            return False
        except AssignmentError as exc:
            state.flash("warning", str(exc).capitalize() + ".")
            return False
        self._forget(token, screen)
        state.flash("success", "Saved." if created else "Already saved (nothing duplicated).")
        return True

    def on_skip(self, token: str, screen: str) -> None:
        user = state.callback_user()
        if user is None:
            return
        reason = st.session_state.get(f"{self.prefix}skip_reason-{screen}") or SKIP_REASONS[0]
        try:
            with state.write_session() as session:
                self.skip(token, session=session, annotator_id=user.id, reason=reason)
        except AssignmentError as exc:
            state.flash("info", f"Moved on: {exc}.")
            return
        self._forget(token, screen)
        state.flash("info", f"Skipped; you will not see this {self.noun} again.")

    def skip_row(self, token: str, screen: str) -> None:
        """A reason and the Skip button (inside the page's form)."""
        reason_column, skip_column = st.columns([3, 1], vertical_alignment="bottom")
        with reason_column:
            st.selectbox("Skip reason", SKIP_REASONS, key=f"{self.prefix}skip_reason-{screen}")
        with skip_column:
            st.form_submit_button("Skip (s)", key=f"{self.prefix}skip-{screen}", on_click=self.on_skip,
                                  args=(token, screen), width="stretch")
