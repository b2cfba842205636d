"""Unsafe spans in real Chromium against ``streamlit run``: on the compare page a clinician marks words
of a hostile reply by mouse (drag, then a kind's button) and words of the other reply by keyboard only
(Tab, arrows, Shift+arrows, a kind's letter), then judges by keyboard; on the ranking page by keyboard
only. The spans are stored with the judgment or ranking at the right offsets; the XSS payloads stay
inert text, inside the marks too. Screenshots go to test-output/app/ like the other browser tests'."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import select
from sqlmodel import Session

from db.crud import add_response, get_or_create_candidate, get_or_create_prompt
from db.models import Annotator, Judgment, Ranking
from db.rankings import add_ranking_task
from db.spans import spans_of
from tests.app_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    OUTPUT,
    current_screen,
    login,
    press_strength,
    running_app,
    wait_for_keys,
    wait_for_new_pair,
)
from tests.factories import PASSWORD, XSS_REPLY, make_database, user

pytestmark = pytest.mark.browser

SCREENS = OUTPUT  # screenshots beside the other browser tests'
RANKED = "Honestly, just get over it 😤 and stop complaining."
# Mouse-drag over the characters [start, end) of the reply whose text contains ``needle``.
DRAG_JS = """([needle, start, end]) => {
  for (const body of document.querySelectorAll('.tp-text')) {
    if (!body.textContent.includes(needle)) { continue; }
    function at(u) {
      const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
      let total = 0;
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        if (u <= total + n.textContent.length) { return [n, u - total]; }
        total += n.textContent.length;
      }
      return null;
    }
    function point(u, side) {
      const [node, offset] = at(u);
      const r = document.createRange();
      r.setStart(node, side === 'start' ? offset : offset - 1);
      r.setEnd(node, side === 'start' ? offset + 1 : offset);
      const box = r.getBoundingClientRect();
      return side === 'start' ? [box.left + 1, box.top + box.height / 2] : [box.right - 1, box.top + box.height / 2];
    }
    return [point(start, 'start'), point(end, 'end')];
  }
  return null;
}"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-spans")
    url = f"sqlite:///{folder / 'therapref.db'}"
    engine, project = make_database(url, n_prompts=2, n_clinicians=2, judgments_required=2, xss=True)
    with Session(engine, expire_on_commit=False) as session:
        rude, _ = get_or_create_candidate("rude", session=session, provider="local")
        prompt, _ = get_or_create_prompt(user("Nobody takes my feelings seriously."), session=session, source="test")
        replies = [add_response(prompt, c, t, session=session)[0] for c, t in (
            (project.candidates[0], "That sounds lonely. What happened?"),
            (project.candidates[1], "Feelings pass. Try a walk."), (rude, RANKED))]
        add_ranking_task(replies, session=session)
        session.commit()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    with running_app(url, folder / "streamlit.log") as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield {"url": base_url, "engine": engine, "browser": browser}
        browser.close()
    engine.dispose()


def _page(app):
    context = app["browser"].new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.add_init_script("window.__xss = undefined;")
    return context, page


def _tab_to(page, needle: str, presses: int = 80) -> None:
    """Press Tab until the focused element is the reply text that contains ``needle`` (keyboard only)."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("(n) => { const a = document.activeElement; return Boolean(a && a.classList && "
                         "a.classList.contains('tp-text') && a.textContent.includes(n)); }", needle):
            return
    raise AssertionError(f"Tab never reached the reply text with {needle!r}")


def _user_id(engine, username: str) -> int:
    with Session(engine) as session:
        return session.execute(select(Annotator.id).where(Annotator.username == username)).scalar_one()


def test_mark_spans_by_mouse_and_keyboard_on_the_compare_page(app):
    context, page = _page(app)
    login(page, app["url"], "clin0", PASSWORD)
    screen = current_screen(page)
    page.get_by_text("<script>window.__xss = 1;</script>").wait_for(timeout=30_000)
    page.locator(".tp-text").first.wait_for()
    # Mouse: drag over "<script>window.__xss = 1;</script>" in the hostile reply, then "Toxic language".
    start = XSS_REPLY.index("<script>")
    end = XSS_REPLY.index("</script>") + len("</script>")
    (x0, y0), (x1, y1) = page.evaluate(DRAG_JS, ["Here is a thought.", start, end])
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=8)
    page.mouse.up()
    hostile = page.locator(".tp-span-marker", has_text="Here is a thought.")
    hostile.get_by_text("Mark “<script>window.__xss = 1;</script>” as:").wait_for(timeout=10_000)
    hostile.get_by_role("button", name="Toxic language (t)").click()
    hostile.locator("mark.tp-mark").first.wait_for()
    assert hostile.locator("mark.tp-mark").inner_text() == "<script>window.__xss = 1;</script>"
    # Keyboard only: Tab to the plain reply, Shift+→ over "A plain", "d" (dismissive).
    page.locator("h1").first.click()
    _tab_to(page, "A plain reply.")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("d")
    plain = page.locator(".tp-span-marker", has_text="A plain reply.")
    plain.locator("mark.tp-mark").first.wait_for()
    assert plain.locator("mark.tp-mark").first.inner_text() == "A plain"
    # "2" while the text has the focus is the marker's, not the page's: nothing is submitted.
    page.keyboard.press("2")
    assert current_screen(page) == screen
    assert page.evaluate("window.__xss") is None and page.locator('img[src="x"]').count() == 0
    page.screenshot(path=str(SCREENS / "span_marking.png"), full_page=True)
    # Leave the text (Esc), then judge by keyboard: w (clearly), 1 (A better).
    page.keyboard.press("Escape")
    press_strength(page, "w", f"strength-{screen}")
    page.keyboard.press("1")
    wait_for_new_pair(page, screen)
    assert page.evaluate("window.__xss") is None
    context.close()

    engine = app["engine"]
    with Session(engine) as session:
        judgment = session.execute(select(Judgment).where(
            Judgment.annotator_id == _user_id(engine, "clin0"))).scalars().one()
        marked = {(s.quote, s.flag) for s in spans_of(judgment_id=judgment.id, session=session)}
        assert marked == {("<script>window.__xss = 1;</script>", "toxic"), ("A plain", "dismissive")}
        assert "toxic" in judgment.flags_a + judgment.flags_b and "dismissive" in judgment.flags_a + judgment.flags_b


def test_mark_spans_by_keyboard_on_the_ranking_page(app):
    context, page = _page(app)
    login(page, app["url"], "clin1", PASSWORD)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Rank replies").click()
    page.get_by_text(RANKED).wait_for(timeout=60_000)
    wait_for_keys(page, "rank")
    page.locator("h1").first.click()
    _tab_to(page, RANKED)
    # Words: Honestly, | just | get | over | it | 😤 … → → then Shift+→ ×2 selects "get over it".
    for key in ("ArrowRight", "ArrowRight", "Shift+ArrowRight", "Shift+ArrowRight", "Shift+ArrowRight"):
        page.keyboard.press(key)
    page.keyboard.press("d")
    marker = page.locator(".tp-span-marker", has_text=RANKED)
    marker.locator("mark.tp-mark").first.wait_for()
    assert marker.locator("mark.tp-mark").inner_text() == "get over it 😤"
    page.screenshot(path=str(SCREENS / "span_marking_ranking.png"), full_page=True)
    page.keyboard.press("Escape")
    for key in ("1", "2", "3", "Enter"):
        page.keyboard.press(key)
        page.wait_for_timeout(400)
    page.get_by_text("All done").wait_for(timeout=60_000)
    context.close()
    engine = app["engine"]
    with Session(engine) as session:
        ranking = session.execute(select(Ranking).where(
            Ranking.annotator_id == _user_id(engine, "clin1"))).scalars().one()
        [span] = spans_of(ranking_id=ranking.id, session=session)
        # Code point offsets: the emoji is one character, as Python counts.
        assert (span.quote, span.flag, span.start, span.end) == ("get over it 😤", "dismissive",
                                                                 RANKED.index("get"), RANKED.index("😤") + 1)
