"""Per-criterion judgments on the compare page (real Chromium against ``streamlit run``): judged by
keyboard only, a required criterion enforced, verdicts stored in the comparison's own a/b, and
hostile text in replies and criterion descriptions shown as inert text."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import select
from sqlmodel import Session

from db.criteria import CriterionSpec, publish_guidelines, verdicts_of
from db.models import Judgment
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, OUTPUT, current_screen, login, running_app
from tests.factories import PASSWORD, make_database

pytestmark = pytest.mark.browser

HOSTILE_DESCRIPTION = "Spot risk <img src=x onerror=\"window.__xss = 7\"> <script>window.__xss = 8</script> **now**"
CRITERIA = [CriterionSpec("empathy", "Reflects feelings."),
            CriterionSpec("safety", HOSTILE_DESCRIPTION, required=True),
            CriterionSpec("helpfulness", "One next step.")]
CRITERION_ROW = "[class*='st-key-crit-{row}-{screen}'] input[type=radio]"


def test_criteria_judged_by_keyboard_land_in_canonical_terms(tmp_path):
    url = f"sqlite:///{tmp_path / 'criteria.db'}"
    # judgments_required=2 for the plain pair: the hostile one (one place) comes first in the queue.
    engine, project = make_database(url, n_prompts=1, n_clinicians=1, judgments_required=2, xss=True)
    with Session(engine, expire_on_commit=False) as session:
        publish_guidelines("Judge each criterion.", criteria=CRITERIA, session=session)
        session.commit()
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.add_init_script("window.__xss = undefined;")
        login(page, base_url, "clin0", PASSWORD)
        screen = current_screen(page)
        page.get_by_text("Here is a thought.", exact=False).first.wait_for(timeout=30_000)  # the hostile reply
        page.get_by_text("Criteria: the outlined row is the current one").wait_for(timeout=30_000)
        page.locator("h1").first.click()  # focus the page, not a widget
        # Overall: A (left) slightly better, without the required safety verdict: refused, nothing stored.
        page.keyboard.press("q")
        page.keyboard.press("1")
        page.get_by_text("Judge every required criterion: safety.").wait_for(timeout=60_000)
        with Session(engine) as session:
            assert session.execute(select(Judgment.id)).first() is None
        assert current_screen(page) == screen, "the same pair stays on screen"
        # Criteria by keyboard: empathy A better (z), then safety B better (c), helpfulness left blank.
        page.locator("h1").first.click()
        page.keyboard.press("z")
        page.wait_for_function("(s) => document.querySelector(\"[class*='st-key-crit-0-\" + s + \"'] "
                               "input[type=radio]\").checked", arg=screen, timeout=30_000)
        page.keyboard.press("c")
        page.wait_for_function("(s) => document.querySelectorAll(\"[class*='st-key-crit-1-\" + s + \"'] "
                               "input[type=radio]\")[1].checked", arg=screen, timeout=30_000)
        assert not any(page.locator(CRITERION_ROW.format(row=2, screen=screen)).nth(i).is_checked() for i in range(3))
        page.screenshot(path=str(OUTPUT / "criteria.png"))
        page.keyboard.press("1")
        page.get_by_text("Saved.").wait_for(timeout=60_000)
        # Hostile text stayed text: no script ran, no image element, the description is visible as typed.
        assert page.evaluate("window.__xss") is None
        assert page.locator('img[src="x"]').count() == 0
        browser.close()
    with Session(engine) as session:
        judgment = session.execute(select(Judgment)).scalars().one()
        verdicts = verdicts_of(judgment.id, session=session)
    left = judgment.shown_left
    right = "b" if left == "a" else "a"
    assert judgment.preferred == left and judgment.strength == 1
    assert verdicts == {"empathy": left, "safety": right}
    assert judgment.comparison_id == project.comparisons[0].id


def test_hostile_criterion_description_is_inert_text(tmp_path):
    """The description is shown as typed (tags and Markdown as characters), never as HTML."""
    url = f"sqlite:///{tmp_path / 'inert.db'}"
    engine, _project = make_database(url, n_prompts=1, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        publish_guidelines("Judge each criterion.", criteria=CRITERIA, session=session)
        session.commit()
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.add_init_script("window.__xss = undefined;")
        login(page, base_url, "clin0", PASSWORD)
        current_screen(page)
        page.get_by_text("<script>window.__xss = 8</script>", exact=False).first.wait_for(timeout=30_000)
        assert page.get_by_text("**now**", exact=False).count() >= 1
        page.get_by_role("link", name="Guidelines").click()  # in-app navigation keeps the session
        page.get_by_text("Judge each criterion A better / B better / tie", exact=False).wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        assert page.evaluate("window.__xss") is None
        assert page.locator('img[src="x"]').count() == 0
        browser.close()
