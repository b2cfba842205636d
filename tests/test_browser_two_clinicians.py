"""Two clinicians in two browser contexts on a comparison that needs one judgment: exactly one
judgment is stored and the other clinician is moved on (real Chromium, real ``streamlit run``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import select, update
from sqlmodel import Session

from db.engine import session_scope
from db.models import Annotator, Judgment, Reservation, utcnow
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, current_screen, login, running_app
from tests.factories import PASSWORD, make_database

pytestmark = pytest.mark.browser


def test_two_clinicians_one_place(tmp_path):
    url = f"sqlite:///{tmp_path / 'therapref.db'}"
    engine, project = make_database(url, n_prompts=1, n_clinicians=2, judgments_required=1)
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        first_ctx, second_ctx = browser.new_context(), browser.new_context()
        slow, fast = first_ctx.new_page(), second_ctx.new_page()
        login(slow, base_url, "clin0", PASSWORD)
        slow_screen = current_screen(slow)
        # While clin0 holds the only place, clin1 has nothing to do.
        login(fast, base_url, "clin1", PASSWORD)
        fast.get_by_text("All done").wait_for(timeout=60_000)
        # clin0 steps away until the reservation expires; clin1 comes back and gets the same pair.
        with session_scope(engine) as session:
            session.execute(update(Reservation).values(expires_at=utcnow() - timedelta(seconds=1)))
        fast.get_by_role("link", name="Compare").click()
        fast_screen = current_screen(fast)
        with Session(engine) as session:
            held = session.execute(select(Reservation.annotator_id, Reservation.comparison_id)).all()
        assert fast_screen != slow_screen  # screen ids are per rendering, never the shared token
        assert sorted(c for _a, c in held) == [project.comparisons[0].id] * 2  # same pair, both screens
        fast.locator(f".st-key-choice-tie-{fast_screen} button").click()
        fast.get_by_text("All done").wait_for(timeout=60_000)
        # clin0 returns and submits on the stale screen: moved on, nothing stored.
        slow.locator(f".st-key-strength-{slow_screen}").get_by_text("Clearly better", exact=True).click()
        slow.locator(f".st-key-choice-left-{slow_screen} button").click()
        slow.get_by_text("Moved on: another clinician completed this pair first").wait_for(timeout=60_000)
        slow.get_by_text("All done").wait_for(timeout=60_000)
        browser.close()
    with Session(engine) as session:
        rows = session.execute(select(Annotator.username, Judgment.preferred)
                               .join(Annotator, Annotator.id == Judgment.annotator_id)).all()
    assert rows == [("clin1", "tie")]
    engine.dispose()
