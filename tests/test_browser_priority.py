"""Queue priority in a real Chromium against ``streamlit run``: an A/B test's comparison (the newest,
highest id) is the first pair a clinician sees, then the next priority, then the old order."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import update
from sqlmodel import Session

from db.crud import add_response, get_or_create_candidate
from db.engine import session_scope
from db.models import Comparison, PolicyRun
from policy.abtest import create_abtest
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, OUTPUT, app_serving, current_screen, login, running_app
from tests.factories import PASSWORD, PATIENT_MESSAGES, make_database

pytestmark = pytest.mark.browser


def _shown_patient_message(page) -> str:
    body = page.locator("body").inner_text()
    found = [m for m in PATIENT_MESSAGES if m in body]
    assert len(found) == 1, body[:2000]
    return found[0]


def test_clinician_is_served_the_highest_priority_first(tmp_path):
    url = f"sqlite:///{tmp_path / 'therapref.db'}"
    engine, project = make_database(url, n_prompts=4, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        # A policy trained on every prompt but the third: its A/B test has one comparison, made last.
        policy, _ = get_or_create_candidate("policy-new", session=session, provider="local")
        for prompt in project.prompts:
            add_response(prompt, policy, "It makes sense that this weighs on you. What would help tonight?",
                         session=session)
        trained = [p.id for i, p in enumerate(project.prompts) if i != 2]
        session.add(PolicyRun(path="/models/p", method="sft", provenance={"prompt_ids": trained},
                              candidate_model_id=policy.id))
        session.commit()
        result = create_abtest("policy-new", "terse", session=session, generate=False)
        session.commit()
    assert result.prompt_ids == [project.prompts[2].id] and result.created == 1
    with session_scope(engine) as session:  # the second prompt's pair next, ahead of the first's
        session.execute(update(Comparison).where(Comparison.id == project.comparisons[1].id).values(priority=0.5))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        assert app_serving(int(base_url.rsplit(":", 1)[1].strip("/")))
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        login(page, base_url, "clin0", PASSWORD)
        seen = []
        for _ in range(3):
            screen = current_screen(page)
            seen.append(_shown_patient_message(page))
            if len(seen) == 1:
                page.screenshot(path=str(OUTPUT / "priority_first_pair.png"), full_page=True)
            page.locator(f".st-key-choice-tie-{screen} button").click()
            page.wait_for_function(
                "(old) => !document.querySelector('.st-key-choice-left-' + old)", arg=screen, timeout=60_000)
        browser.close()
    assert seen == [PATIENT_MESSAGES[2], PATIENT_MESSAGES[1], PATIENT_MESSAGES[0]]
    engine.dispose()
