"""Helpers for the labeling-app tests (AppTest and browser)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlmodel import Session

from db.crud import add_comparison, add_response, get_or_create_prompt
from db.engine import make_engine
from db.migrate import upgrade
from tests.factories import build_project
from tests.pg import free_port

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "labeling_app" / "app.py"
OUTPUT = ROOT / "test-output" / "app"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS_REPLY = ("Here is a thought.\n<script>window.__xss = 1;</script>\n"
             "<img src=x onerror=\"window.__xss = 2\">\n**not bold** [not a link](http://example.com)")


def make_database(url: str, *, n_prompts: int = 4, n_clinicians: int = 2, judgments_required: int = 1,
                  xss: bool = False):
    """A migrated database with a small project; optionally one pair whose reply is hostile HTML."""
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=n_prompts, n_clinicians=n_clinicians,
                                judgments_required=judgments_required)
        if xss:
            prompt, _ = get_or_create_prompt(
                [{"role": "user", "content": "Line one of my message\nline two <b>not bold</b>"}],
                session=session, source="test")
            hostile, _ = add_response(prompt, project.candidates[0], XSS_REPLY, session=session)
            plain, _ = add_response(prompt, project.candidates[1], "A plain reply.", session=session)
            # One place only, so that it sorts first when the others need more (fewest places first).
            comparison, _ = add_comparison(hostile, plain, session=session, judgments_required=1)
            project.comparisons.insert(0, comparison)
            session.commit()
    return engine, project


@contextlib.contextmanager
def running_app(database_url: str, log_path: Path) -> Iterator[str]:
    """``streamlit run`` on 127.0.0.1 and a free port; yields its base URL; stops it afterwards."""
    from labeling_app.launch import app_url, start_app, stop_app, wait_until_ready

    port = free_port()
    process = start_app(database_url, port=port, log_path=log_path)
    try:
        wait_until_ready(app_url(port=port), 90, process=process)
        yield app_url(port=port)
    finally:
        stop_app(process)


def login(page, base_url: str, username: str, password: str) -> None:
    page.goto(base_url + "/")
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text(f"Signed in as {username}").wait_for(timeout=60_000)


SCREEN_JS = """() => {
  for (const el of document.querySelectorAll('[class*="st-key-choice-left-"]')) {
    for (const cls of el.classList) {
      if (cls.startsWith('st-key-choice-left-')) { return cls.slice('st-key-choice-left-'.length); }
    }
  }
  return null;
}"""


def current_screen(page, timeout: float = 60_000) -> str:
    """The opaque id of the pair on screen, as its widget keys carry it (waits until a pair is shown)."""
    page.wait_for_function(SCREEN_JS, timeout=timeout)
    return page.evaluate(SCREEN_JS)


def wait_for_new_pair(page, old_screen: str, timeout: float = 60_000) -> str | None:
    """Wait until the pair on screen changed (or the queue is done); return the new screen id or None."""
    page.wait_for_function(
        "(old) => { const t = (" + SCREEN_JS + ")(); return (t !== null && t !== old) || "
        "document.body.innerText.includes('All done'); }", arg=old_screen, timeout=timeout)
    return page.evaluate(SCREEN_JS)
