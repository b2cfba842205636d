"""Blinding in the page itself: nothing a clinician's browser holds (text, attributes such as widget
keys, ids and classes, the address) may tell which reply is the comparison's canonical ``a``, which
candidate wrote a reply, or which model it is. Real Chromium against ``streamlit run``.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import select
from sqlmodel import Session

from db.models import CandidateModel, Judgment, Reservation
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, current_screen, login, running_app
from tests.factories import PASSWORD, make_database

pytestmark = pytest.mark.browser

# Every attribute of every element, the address, and the visible text, as the browser holds them.
PAGE_JS = """() => {
  const attributes = [location.href];
  for (const el of document.querySelectorAll('*')) {
    for (const attr of el.attributes) { attributes.push(attr.name + '=' + attr.value); }
  }
  return {attributes: attributes.join('\\n'), text: document.body.innerText};
}"""
# An assignment token: the side shown on the left, a dash, 48 hex digits.
TOKEN_PATTERN = re.compile(r"(?<![0-9a-z])[ab]-[0-9a-f]{48}")


def test_no_token_candidate_or_model_reaches_the_page(tmp_path):
    url = f"sqlite:///{tmp_path / 'blind.db'}"
    engine, _project = make_database(url, n_prompts=4, n_clinicians=1)
    with Session(engine) as session:
        candidates = session.execute(select(CandidateModel.name, CandidateModel.model_id)).all()
    names = {name for name, _model in candidates}
    model_ids = {model for _name, model in candidates}
    seen: list[dict] = []
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        login(page, base_url, "clin0", PASSWORD)
        screen = current_screen(page)
        for _ in range(3):  # three pairs, judged by keyboard (a tie needs no strength)
            seen.append(page.evaluate(PAGE_JS))
            page.locator("h1").first.click()
            page.keyboard.press("3")
            page.wait_for_function(
                "(old) => !document.querySelector('[class*=\"st-key-choice-tie-' + old + '\"]') || "
                "document.body.innerText.includes('All done')", arg=screen, timeout=60_000)
            screen = current_screen(page) if "All done" not in page.inner_text("body") else None
            if screen is None:
                break
        browser.close()
    with Session(engine) as session:
        tokens = set(session.execute(select(Reservation.token)).scalars()) | set(
            session.execute(select(Judgment.idempotency_key)).scalars())
    assert len(seen) == 3, "three pairs were on screen and judged"
    assert len(tokens) >= 3, "three pairs were on screen and judged"
    for snapshot in seen:
        everything = snapshot["attributes"] + "\n" + snapshot["text"]
        assert not any(token in everything for token in tokens), "an assignment token reached the page"
        assert TOKEN_PATTERN.search(everything) is None, "a token-shaped key tells the canonical side"
        assert not any(model in everything for model in model_ids), "a model id reached the page"
        words = set(re.split(r"[^0-9a-z]+", snapshot["attributes"].lower()))
        # Candidate names may be ordinary words in the conversation's text; never in keys or ids.
        assert not names & words, f"a candidate name is in the page's attributes: {names & words}"
        assert "response_a" not in everything
        assert "response_b" not in everything
