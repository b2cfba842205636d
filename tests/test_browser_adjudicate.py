"""The adjudication page in a real Chromium (Playwright) against ``streamlit run``: a lead adjudicates
two disputed pairs by keyboard only (shortcut keys, Tab into the note), while hostile HTML in a reply,
a rationale, an annotator's name and the lead's own note stays inert text. Screenshot:
test-output/app/adjudicate.png."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright
from sqlmodel import Session, select

from db.auth import create_annotator
from db.crud import add_judgment
from db.models import Adjudication
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, OUTPUT, login, press_strength, running_app, wait_for_keys
from tests.factories import HOSTILE_NAME, PASSWORD, make_database

pytestmark = pytest.mark.browser

XSS_RATIONALE = "<img src=x onerror=\"window.__xss = 3\"> **bold?** <script>window.__xss = 4;</script>"
XSS_NOTE = "<script>window.__xss = 5;</script> <b>final</b>"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-adjudicate")
    url = f"sqlite:///{folder / 'therapref.db'}"
    engine, project = make_database(url, n_prompts=2, n_clinicians=2, xss=True)
    with Session(engine, expire_on_commit=False) as session:
        create_annotator("lead1", PASSWORD, session=session, role="lead", display_name="Dr Lead")
        hostile = create_annotator("hostile", PASSWORD, session=session, display_name=HOSTILE_NAME)
        xss, older = project.comparisons[0], project.comparisons[1]
        k0, _k1 = project.clinicians
        # The older pair: one clinician flags B, the other does not (a dispute on safety).
        add_judgment(older, k0, "a", session=session, strength=1, flags_b=["dismissive"], rationale="B brushes it off.")
        add_judgment(older, hostile, "a", session=session, strength=2, rationale="Both fine; A warmer.")
        # The hostile pair: opposite preferences, a hostile rationale.
        add_judgment(xss, k0, "a", session=session, strength=3, rationale=XSS_RATIONALE)
        add_judgment(xss, hostile, "b", session=session, strength=1, rationale="Plain is safer.")
        session.commit()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with running_app(url, folder / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield {"url": base_url, "engine": engine, "project": project, "browser": browser}
        browser.close()
    engine.dispose()


def _wait_for_pair(page, comparison_id: int) -> None:
    page.locator(f".st-key-adj_choice-left-c{comparison_id} button").wait_for(timeout=60_000)
    wait_for_keys(page, "adjudicate")


def test_lead_adjudicates_by_keyboard_and_hostile_text_is_inert(app):
    xss, older = app["project"].comparisons[0], app["project"].comparisons[1]
    context = app["browser"].new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.add_init_script("window.__xss = undefined;")
    login(page, app["url"], "lead1", PASSWORD, shown_as="Dr Lead")
    # To the page by keyboard: the sidebar's link, then Enter (a reload would start a new session).
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Adjudicate").focus()
    page.keyboard.press("Enter")
    _wait_for_pair(page, older.id)  # oldest first
    page.get_by_text("2 disputed pair(s) waiting").wait_for()
    page.get_by_text("B brushes it off.").wait_for()

    # Pair 1 by keys only: "w" (clearly better), then "2" (B is better).
    press_strength(page, "w", f"adj_strength-c{older.id}")
    page.keyboard.press("2")
    _wait_for_pair(page, xss.id)
    page.get_by_text(f"Comparison {older.id} adjudicated: B better.").wait_for()

    # The hostile pair: reply, rationale and name are text; nothing runs, nothing is bold or an image.
    page.get_by_text("<script>window.__xss = 1;</script>").wait_for(timeout=30_000)
    page.get_by_text('<img src=x onerror="window.__xss = 3">', exact=False).first.wait_for()
    page.get_by_text(HOSTILE_NAME).first.wait_for()
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("strong", has_text="bold?").count() == 0
    assert page.evaluate("window.__xss") is None
    assert "Here is a thought.\n<script>" in page.get_by_text("Here is a thought.").inner_text()
    page.set_viewport_size({"width": 1280, "height": 1900})  # the whole page: Streamlit scrolls inside it
    page.wait_for_timeout(500)
    page.screenshot(path=str(OUTPUT / "adjudicate.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 1000})

    # Pair 2 by keyboard only: Tab to the note, type it, Tab out of it, then "1" (A is better).
    for _ in range(120):
        if page.evaluate("document.activeElement && document.activeElement.tagName === 'TEXTAREA'"):
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Note (why this is the final label)"
    page.keyboard.type(XSS_NOTE)
    page.keyboard.press("1")  # typed into the note, not a shortcut
    page.keyboard.press("Tab")
    page.keyboard.press("1")
    page.get_by_text("No disputed pairs are waiting for adjudication.").wait_for(timeout=60_000)
    page.get_by_text(f"Comparison {xss.id} adjudicated: A better.").wait_for()
    assert page.evaluate("window.__xss") is None
    context.close()

    with Session(app["engine"]) as session:
        rows = {r.comparison_id: r for r in session.exec(select(Adjudication)).all()}
    assert (rows[older.id].preferred, rows[older.id].strength, rows[older.id].note) == ("b", 2, "")
    assert (rows[xss.id].preferred, rows[xss.id].strength, rows[xss.id].note) == ("a", None, XSS_NOTE + "1")


def test_clinician_has_no_adjudicate_link_and_signed_out_gets_login(app):
    context = app["browser"].new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(app["url"] + "/adjudicate")  # signed out: the login page at that address
    page.get_by_role("button", name="Log in").wait_for(timeout=60_000)
    assert "B brushes it off." not in page.locator("body").inner_text()
    login(page, app["url"], "clin0", PASSWORD)
    sidebar = page.locator('[data-testid="stSidebarNav"]')
    sidebar.get_by_role("link", name="Compare").wait_for(timeout=60_000)
    assert sidebar.get_by_role("link", name="Adjudicate").count() == 0
    context.close()
