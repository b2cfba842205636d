"""The ranking page in real Chromium against ``streamlit run``: three replies ranked by keyboard only
(with a tie and a Backspace), stored in canonical terms with their pairwise judgments; hostile replies
stay inert text; nothing in the page tells which reply is which candidate; a twenty-turn conversation
stays compact with the replies and the ranking controls in view."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import select
from sqlmodel import Session

from db.crud import add_response, get_or_create_candidate, get_or_create_prompt
from db.models import CandidateModel, Comparison, Judgment, Ranking, RankingReservation, RankingTask
from db.rankings import add_ranking_task, shown_order_for
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, OUTPUT, login, running_app, wait_for_keys
from tests.factories import PASSWORD, make_database

pytestmark = pytest.mark.browser

ALPHA = "Reply ALPHA: that sounds exhausting. <script>window.__xss = 1;</script>"
BETA = "Reply BETA: try to rest. <img src=x onerror=\"window.__xss = 2\"> **not bold**"
GAMMA = "Reply GAMMA: you are carrying a lot; what would help most tonight?"
PAGE_JS = """() => {
  const attributes = [location.href];
  for (const el of document.querySelectorAll('*')) {
    for (const attr of el.attributes) { attributes.push(attr.name + '=' + attr.value); }
  }
  return {attributes: attributes.join('\\n'), text: document.body.innerText};
}"""
RANK_KEYS_JS = """() => {
  const keys = [];
  for (const el of document.querySelectorAll('[class*="st-key-rank"]')) {
    for (const cls of el.classList) { if (cls.startsWith('st-key-rank')) { keys.push(cls); } }
  }
  return keys;
}"""


def _database(url: str, messages: list[dict[str, str]] | None = None):
    """One clinician, one ranking task of three replies from three candidates (no pairs in the queue)."""
    engine, project = make_database(url, n_prompts=1, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        for comparison in project.comparisons:  # the factory's pair is not what this page shows
            session.delete(session.get(Comparison, comparison.id))
        third, _ = get_or_create_candidate("gamma-cand", session=session, provider="local", model_id="gamma-model-x")
        prompt, _ = get_or_create_prompt(messages or [{"role": "user", "content": "I cannot sleep."}],
                                         session=session, source="test")
        warm, terse = project.candidates
        replies = [add_response(prompt, c, t, session=session)[0]
                   for c, t in ((warm, ALPHA), (terse, BETA), (third, GAMMA))]
        task, _ = add_ranking_task(replies, session=session)
        session.commit()
    return engine, project, task, {r.text: r.id for r in replies}


def _open_rank_page(page, base_url: str) -> None:
    login(page, base_url, "clin0", PASSWORD)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Rank replies").click()
    page.get_by_role("heading", name="Rank the replies, best first").wait_for(timeout=60_000)
    page.get_by_text("Reply 3", exact=True).wait_for(timeout=60_000)
    wait_for_keys(page, "rank")


def _press(page, key: str, expect: str) -> None:
    """Press one key (focus on the page, not a field) and wait until the ranking line shows ``expect``."""
    page.keyboard.press(key)
    page.get_by_text(f"Your ranking (best first): {expect}").wait_for(timeout=60_000)


def test_rank_three_replies_by_keyboard_with_a_tie(tmp_path):
    url = f"sqlite:///{tmp_path / 'rank.db'}"
    engine, project, task, ids = _database(url)
    clinician = project.clinicians[0].id
    shown = shown_order_for(task.id, clinician, task.response_ids)
    number = {text: shown.index(rid) + 1 for text, rid in ids.items()}  # screen number of each reply
    with Session(engine) as session:
        names = set(session.execute(select(CandidateModel.name)).scalars())
        model_ids = set(session.execute(select(CandidateModel.model_id)).scalars())
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.add_init_script("window.__xss = undefined;")
        _open_rank_page(page, base_url)
        # Hostile replies are shown as their own text, and nothing ran.
        page.get_by_text("<img src=x onerror=", exact=False).first.wait_for(timeout=30_000)
        assert page.get_by_text("<script>window.__xss = 1;</script>", exact=False).count() == 1
        assert page.evaluate("window.__xss") is None
        assert page.locator('img[src="x"]').count() == 0
        assert page.locator("strong", has_text="not bold").count() == 0
        # Blind: no token, no candidate or model name, no response id in any attribute or key.
        with Session(engine) as session:
            token = session.execute(select(RankingReservation.token)).scalars().one()
        snapshot = page.evaluate(PAGE_JS)
        everything = snapshot["attributes"] + "\n" + snapshot["text"]
        assert token not in everything and re.search(r"r-[0-9a-f]{48}", everything) is None
        assert not any(model in everything for model in model_ids)
        assert not names & set(re.split(r"[^0-9a-z-]+", snapshot["attributes"].lower()))
        keys = page.evaluate(RANK_KEYS_JS)
        assert keys and all(re.fullmatch(r"st-key-rank_[a-z_]+?(_[1-9])?-[0-9a-f]{16}", k) for k in keys), keys

        # GAMMA best, then ALPHA and BETA tied; a wrong first press is taken back with Backspace.
        g, a, b = number[GAMMA], number[ALPHA], number[BETA]
        page.locator("h1").first.click()
        _press(page, str(b), f"{b}  ·")
        _press(page, "Backspace", "nothing yet")
        _press(page, str(g), f"{g}  ·")
        _press(page, str(a), f"{g} > {a}  ·")
        _press(page, "=", f"{g} > {a} =  ·")
        _press(page, str(b), f"{g} > {a} = {b}  ·  3 of 3 ranked")
        page.screenshot(path=str(OUTPUT / "rank_before_submit.png"))
        page.keyboard.press("Enter")
        page.get_by_text("Saved.").wait_for(timeout=60_000)
        page.get_by_text("All done: there are no rankings left for you").wait_for(timeout=60_000)
        assert page.evaluate("window.__xss") is None
        browser.close()

    with Session(engine) as session:
        ranking = session.execute(select(Ranking)).scalars().one()
        assert ranking.annotator_id == clinician and ranking.task_id == task.id
        assert ranking.order == [[ids[GAMMA]], sorted([ids[ALPHA], ids[BETA]])]
        assert ranking.shown_order == shown
        assert ranking.ms_spent and ranking.ms_spent > 0 and ranking.guideline_version == 1
        assert session.get(RankingTask, task.id).judgments_count == 1
        rows = session.execute(select(Comparison.response_a_id, Comparison.response_b_id, Judgment.preferred,
                                      Judgment.strength, Judgment.ranking_id)
                               .join(Judgment, Judgment.comparison_id == Comparison.id)).all()
    better = {}
    for a_id, b_id, preferred, strength, ranking_id in rows:
        assert ranking_id == ranking.id
        winner = {"a": a_id, "b": b_id}.get(preferred)
        better[frozenset((a_id, b_id))] = (winner, strength)
    assert better == {frozenset((ids[GAMMA], ids[ALPHA])): (ids[GAMMA], 1),
                      frozenset((ids[GAMMA], ids[BETA])): (ids[GAMMA], 1),
                      frozenset((ids[ALPHA], ids[BETA])): (None, None)}


def _twenty_turns() -> list[dict[str, str]]:
    turns = []
    for i in range(1, 21):
        role = "user" if i % 2 else "assistant"
        text = "Turn 1: it started when I moved" if i == 1 else \
            f"Turn {i}: " + "I keep thinking about it and it does not get easier. " * 5
        turns.append({"role": role, "content": text})
    turns.append({"role": "user", "content": "Turn 21: what should I do tonight?"})
    return turns


def test_twenty_turns_stay_compact_on_the_ranking_page(tmp_path):
    url = f"sqlite:///{tmp_path / 'long.db'}"
    _database(url, messages=_twenty_turns())
    with running_app(url, tmp_path / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        _open_rank_page(page, base_url)
        page.get_by_text("Earlier in the conversation (18 messages)").wait_for(timeout=30_000)
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        page.screenshot(path=str(OUTPUT / "rank_long_conversation.png"))
        in_view = [page.get_by_text("Turn 21: what should I do tonight?").first,
                   page.get_by_text("Reply ALPHA").first, page.get_by_text("Reply BETA").first,
                   page.get_by_text("Reply GAMMA").first,
                   *(page.get_by_role("button", name=f"Rank 1st ({n})") for n in (1, 2, 3)),
                   page.get_by_text("Your ranking (best first)").first,
                   page.get_by_role("button", name="Submit ranking (Enter)")]
        for locator in in_view:
            box = locator.bounding_box()
            assert box is not None
            assert box["y"] + box["height"] <= 900, f"{locator} is below the fold at y={box['y']:.0f}"
        assert not page.get_by_text("Turn 1: it started").is_visible(), "earlier turns start folded"
        browser.close()
