"""Onboarding by calibration in real Chromium against ``streamlit run``: a new clinician judges the
calibration set first, by keyboard only, and sees the expected answer and the lead's note (hostile
markup in the note stays inert text) after each; below the admin's threshold real work waits; the
admin's calibration page shows the accuracy. Screenshots go to test-output/app/ like the other browser tests'."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright
from sqlmodel import Session

from analytics.gold import set_gold
from db.calibration import add_calibration_item, set_calibration_threshold
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, OUTPUT, current_screen, login, press_strength, running_app
from tests.factories import PASSWORD, make_database

pytestmark = pytest.mark.browser

SCREENS = OUTPUT  # screenshots beside the other browser tests'
NOTE = "A names the feeling; B dismisses it. <img src=x onerror=\"window.__xss = 3\">"


def test_calibration_first_with_feedback_then_the_threshold_and_the_admin_view(tmp_path):
    url = f"sqlite:///{tmp_path / 'therapref.db'}"
    engine, project = make_database(url, n_prompts=3, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        first, second = project.comparisons[0], project.comparisons[1]
        warm_first = "a" if first.response_a_id == project.responses[(first.prompt_id, "warm")].id else "b"
        warm_second = "a" if second.response_a_id == project.responses[(second.prompt_id, "warm")].id else "b"
        set_gold(first.id, warm_first, session=session, actor="admin")
        set_gold(second.id, warm_second, session=session, actor="admin")
        add_calibration_item(first.id, session=session, actor="admin", note=NOTE)
        add_calibration_item(second.id, session=session, actor="admin", note="Prefer the warm reply.")
        set_calibration_threshold(1.0, session=session, actor="admin")
        session.commit()
    SCREENS.mkdir(parents=True, exist_ok=True)
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.add_init_script("window.__xss = undefined;")
        login(page, base_url, "clin0", PASSWORD)
        page.get_by_text("Calibration 1 of 2").wait_for(timeout=60_000)
        # Keyboard only: the warm reply ("That sounds really hard…") is the right answer on item 1.
        screen = current_screen(page)
        side = "1" if "That sounds" in page.locator(".tp-text").first.inner_text() else "2"
        page.locator("h1").first.click()
        press_strength(page, "w", f"strength-{screen}")
        page.keyboard.press(side)
        page.get_by_text("You matched the expected answer").wait_for(timeout=60_000)
        page.get_by_text(NOTE).wait_for()  # the note, as text
        assert page.evaluate("window.__xss") is None and page.locator('img[src="x"]').count() == 0
        page.screenshot(path=str(SCREENS / "calibration_feedback.png"), full_page=True)
        page.keyboard.press("Enter")
        # Item 2: choose the terse reply (wrong), then see the expected answer.
        page.get_by_text("Calibration 2 of 2").wait_for(timeout=60_000)
        screen = current_screen(page)
        wrong = "2" if "That sounds" in page.locator(".tp-text").first.inner_text() else "1"
        page.locator("h1").first.click()
        press_strength(page, "w", f"strength-{screen}")
        page.keyboard.press(wrong)
        page.get_by_text("The expected answer was").wait_for(timeout=60_000)
        page.screenshot(path=str(SCREENS / "calibration_feedback_wrong.png"), full_page=True)
        page.keyboard.press("Enter")
        # 1 of 2 < 100%: real work waits.
        page.get_by_text("is below the 100% your lead requires").wait_for(timeout=60_000)
        assert page.locator(".tp-text").count() == 0
        context.close()

        context = browser.new_context(viewport={"width": 1280, "height": 1100})
        page = context.new_page()
        login(page, base_url, "admin", PASSWORD)
        page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Calibration").click()
        page.get_by_role("heading", name="Calibration").first.wait_for(timeout=60_000)
        page.get_by_text("Threshold before real work").wait_for()
        page.wait_for_timeout(1500)  # the data grids draw on a canvas
        page.screenshot(path=str(SCREENS / "admin_calibration.png"), full_page=True)
        # Reset clin0: the set again.
        page.get_by_role("button", name="Take the set again").click()
        page.get_by_text("clin0 takes the calibration set again (2 judgments removed).").wait_for(timeout=60_000)
        context.close()
        browser.close()
    engine.dispose()
