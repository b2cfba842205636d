"""The labeling app in a real Chromium (Playwright) against ``streamlit run`` on 127.0.0.1.

One app server and one browser for the whole module; screenshots go to test-output/app/.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import select
from sqlmodel import Session

from db.models import Annotator, Comparison, Judgment, Response
from tests.app_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    OUTPUT,
    current_screen,
    login,
    press_strength,
    running_app,
    wait_for_new_pair,
)
from tests.factories import PASSWORD, make_database

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-app")
    url = f"sqlite:///{folder / 'therapref.db'}"
    engine, project = make_database(url, n_prompts=4, n_clinicians=2, judgments_required=2, xss=True)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with running_app(url, folder / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield {"url": base_url, "engine": engine, "project": project, "browser": browser}
        browser.close()
    engine.dispose()


def _page(app):
    context = app["browser"].new_context(viewport={"width": 1280, "height": 900})
    return context, context.new_page()


def test_logged_out_browser_sees_only_the_login_page(app):
    context, page = _page(app)
    for path in ("/", "/progress", "/guidelines", "/admin_annotators", "/admin_data"):
        page.goto(app["url"] + path)
        page.get_by_role("button", name="Log in").wait_for(timeout=60_000)
        body = page.locator("body").inner_text()
        assert "Response A" not in body
        assert "Annotators" not in body
        assert "My progress" not in body
        assert page.locator('[data-testid="stSidebarNav"]').count() == 0
    page.screenshot(path=str(OUTPUT / "login.png"), full_page=True)
    page.get_by_role("textbox", name="Username").fill("clin0")
    page.get_by_role("textbox", name="Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Login failed").wait_for(timeout=60_000)
    context.close()


def test_judge_three_pairs_one_by_keyboard_and_hostile_text_is_inert(app):
    engine = app["engine"]
    context, page = _page(app)
    page.add_init_script("window.__xss = undefined;")
    login(page, app["url"], "clin0", PASSWORD)
    first = current_screen(page)
    # The first pair holds a reply with <script> and <img onerror>: shown as text, nothing runs.
    page.get_by_text("<script>window.__xss = 1;</script>").wait_for(timeout=30_000)
    page.get_by_text('<img src=x onerror="window.__xss = 2">').wait_for()
    assert page.evaluate("window.__xss") is None
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("text=not bold").count() >= 1
    hostile = page.get_by_text("Here is a thought.")
    assert "Here is a thought.\n<script>" in hostile.inner_text()  # line breaks preserved
    assert page.locator("strong", has_text="not bold").count() == 0  # no Markdown either
    page.screenshot(path=str(OUTPUT / "compare.png"), full_page=True)

    # Pair 1 by mouse: much better, left.
    page.locator(f".st-key-strength-{first}").get_by_text("Much better", exact=True).click()
    page.locator(f".st-key-choice-left-{first} button").click()
    second = wait_for_new_pair(page, first)
    # Pair 2 by mouse: tie.
    page.locator(f".st-key-choice-tie-{second} button").click()
    third = wait_for_new_pair(page, second)
    # Pair 3 by keyboard only: "w" (clearly better), then "2" (B is better).
    page.locator("h1").first.click()  # focus the page, not a text field
    press_strength(page, "w", f"strength-{third}")
    page.keyboard.press("2")
    wait_for_new_pair(page, third)
    assert page.evaluate("window.__xss") is None
    context.close()

    with Session(engine) as session:
        clin = session.execute(select(Annotator).where(Annotator.username == "clin0")).scalars().one()
        rows = session.execute(select(Judgment).where(Judgment.annotator_id == clin.id)
                               .order_by(Judgment.id)).scalars().all()
        assert len(rows) == 3
        expected = []
        for row, screen, strength in zip(rows, ("left", "tie", "right"), (3, None, 2), strict=True):
            shown_left = row.idempotency_key[0]  # the token on the server says which side was on the left
            ab = {"left": shown_left, "right": "b" if shown_left == "a" else "a"}.get(screen, screen)
            expected.append((ab, strength, shown_left))
        assert [(r.preferred, r.strength, r.shown_left) for r in rows] == expected
        assert all(r.guideline_version == 1 and r.ms_spent and r.ms_spent > 0 for r in rows)
        first_comparison = session.get(Comparison, rows[0].comparison_id)
        texts = {session.get(Response, first_comparison.response_a_id).text,
                 session.get(Response, first_comparison.response_b_id).text}
        assert any("<script>" in t for t in texts)


def test_admin_pages(app):
    context, page = _page(app)
    login(page, app["url"], "admin", PASSWORD)
    sidebar = page.locator('[data-testid="stSidebarNav"]')
    for link, heading, ready, shot in (
        ("Live progress", "Live progress", "Judgments still needed", "admin_progress.png"),
        ("Data", "Data", "Responses by candidate model", "admin_data.png"),
        ("Annotators", "Annotators", "Reset password", "admin_annotators.png"),
    ):
        sidebar.get_by_role("link", name=link).click()
        page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=60_000)
        page.get_by_text(ready).first.wait_for(timeout=60_000)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=60_000)  # tables draw on a canvas
        page.wait_for_timeout(300)
        page.screenshot(path=str(OUTPUT / shot), full_page=True)
    context.close()
