"""A twenty-turn conversation on the compare page (real Chromium): earlier turns folded, the whole
conversation one click away, the two replies in view on arrival, judged by keyboard, text inert."""

from __future__ import annotations

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import sync_playwright
from sqlalchemy import select
from sqlmodel import Session

from db.crud import add_comparison, add_response, get_or_create_prompt
from db.models import Judgment
from tests.app_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    OUTPUT,
    current_screen,
    login,
    running_app,
    wait_for_new_pair,
)
from tests.factories import PASSWORD, make_database

pytestmark = pytest.mark.browser

FIRST_TURN = "Turn 1: <b>it started</b> when I moved cities <img src=x onerror=\"window.__xss = 3\">"


def _twenty_turns() -> list[dict[str, str]]:
    turns = []
    for i in range(1, 21):
        role = "user" if i % 2 else "assistant"
        text = FIRST_TURN if i == 1 else f"Turn {i}: " + "I keep thinking about it and it does not get easier. " * 5
        turns.append({"role": role, "content": text})
    turns.append({"role": "user", "content": "Turn 21: what should I do tonight?"})
    return turns


def test_twenty_turns_stay_compact_and_the_replies_in_view(tmp_path):
    url = f"sqlite:///{tmp_path / 'long.db'}"
    engine, project = make_database(url, n_prompts=1, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        prompt, _ = get_or_create_prompt(_twenty_turns(), session=session, source="test")
        warm, terse = project.candidates
        a, _ = add_response(prompt, warm, "Reply ALPHA: that sounds exhausting.", session=session)
        b, _ = add_response(prompt, terse, "Reply BETA: try to rest.", session=session)
        add_comparison(a, b, session=session, judgments_required=1)
        # The factory's own pair is judged away so that the long one is on screen first.
        session.commit()
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.add_init_script("window.__xss = undefined;")
        login(page, base_url, "clin0", PASSWORD)
        for _ in range(2):  # at most one other pair comes first
            old = current_screen(page)
            if page.get_by_text("Turn 21: what should I do tonight?").count():
                break
            page.locator("h1").first.click()
            for _attempt in range(4):  # a key pressed before the shortcut script is in place is lost
                page.keyboard.press("3")
                try:
                    wait_for_new_pair(page, old, timeout=15_000)
                    break
                except PlaywrightTimeoutError:
                    continue
            page.get_by_text("Turn 21: what should I do tonight?").wait_for(timeout=60_000)
        page.get_by_text("Earlier in the conversation (18 messages)").wait_for(timeout=30_000)
        # Arriving on the pair: the latest turn and both replies are on screen without scrolling.
        page.evaluate("window.scrollTo(0, 0)")
        for text in ("Reply ALPHA", "Reply BETA", "How much better?", "Turn 21: what should I do tonight?"):
            box = page.get_by_text(text).first.bounding_box()
            assert box is not None, text
            assert box["y"] + box["height"] <= 900, f"{text} is below the fold at y={box['y']:.0f}"
        assert not page.get_by_text("Turn 1:").is_visible(), "earlier turns start folded"
        page.screenshot(path=str(OUTPUT / "long_conversation.png"))
        # The whole conversation is one click away, shown as text.
        page.get_by_text("Earlier in the conversation (18 messages)").click()
        page.get_by_text(FIRST_TURN).wait_for(timeout=30_000)
        assert page.evaluate("window.__xss") is None
        assert page.locator('img[src="x"]').count() == 0
        # Judged by keyboard only: clearly better, B.
        page.locator("h1").first.click()
        page.keyboard.press("w")
        page.keyboard.press("2")
        page.get_by_text("Saved.").wait_for(timeout=60_000)
        browser.close()
    with Session(engine) as session:
        judged = session.execute(select(Judgment.comparison_id, Judgment.preferred, Judgment.strength)).all()
    assert any(strength == 2 for _c, _p, strength in judged), judged
