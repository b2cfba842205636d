"""Untrusted text is inert everywhere, in a real Chromium: one database whose every free-text field
(prompt, system prompt, reply, candidate name, annotator name, rationale, rewrite, topic, guideline)
holds a `<script>`, an `<img onerror>` and Markdown link/image payloads; every page of the labeling
app (clinician and admin) and the HTML report are opened. No script runs, no element is injected,
no link or remote image appears, and the text is shown literally."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright
from sqlmodel import Session

from candidates.fake_server import free_port
from db.auth import create_annotator
from db.crud import add_comparison, add_judgment, add_response, get_or_create_candidate, get_or_create_prompt
from db.engine import make_engine
from db.guidelines import add_guideline_version
from db.migrate import upgrade
from labeling_app.launch import app_url, start_app, stop_app, wait_until_ready
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, login
from tests.reliability_helpers import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct-horse-battery"
MARKER = "XSSMARK"
PAYLOAD = (f"{MARKER} <script>window.__xss = 1</script> <img src=x onerror=\"window.__xss = 2\"> "
           "[evil link](https://evil.example/l) ![beacon](https://evil.example/b.png) "
           "<a href=\"javascript:window.__xss = 3\">js link</a>")
NAME = f"{MARKER}<img src=x onerror=window.__xss=4>"


def _hostile_database(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        add_guideline_version(f"# Rubric\n\n{PAYLOAD}", session=session)
        create_annotator("admin", PASSWORD, session=session, role="admin", display_name=NAME)
        judges = [create_annotator(f"judge{i}", PASSWORD, session=session, display_name=NAME, credential=NAME)
                  for i in range(2)]
        create_annotator("fresh", PASSWORD, session=session)
        hostile, _ = get_or_create_candidate(NAME, session=session, provider="local")
        plain, _ = get_or_create_candidate("plain", session=session, provider="local")
        for i in range(4):
            prompt, _ = get_or_create_prompt([{"role": "user", "content": f"{i} {PAYLOAD}"}], session=session,
                                             system_prompt=PAYLOAD, source=NAME, topic=NAME, tags=[NAME])
            a, _ = add_response(prompt, hostile, f"reply {i} {PAYLOAD}", session=session)
            b, _ = add_response(prompt, plain, f"plain reply {i}", session=session)
            comparison, _ = add_comparison(a, b, session=session, judgments_required=3)
            for judge in judges:
                add_judgment(comparison, judge, "a" if comparison.response_a_id == a.id else "b", session=session,
                             strength=2, rationale=PAYLOAD, rewrite=PAYLOAD, flags_b=["dismissive"], ms_spent=5000)
        session.commit()
    engine.dispose()


def _assert_inert(page, where: str, *, markdown: bool = False) -> None:  # noqa: ANN001
    """No script ran and no HTML from the data became an element. ``markdown``: the page renders
    admin-authored Markdown on purpose (guidelines), so Markdown links/images are allowed there,
    raw HTML still is not."""
    page.wait_for_timeout(300)  # let late renders (fragments, charts) land
    assert page.evaluate("window.__xss") is None, f"{where}: a script from the data ran"
    injected = page.evaluate("""() => ({
        img: document.querySelectorAll('img[src="x"]').length,
        // Remote images, and links whose text hides where they go. (A bare URL that Markdown
        // auto-links shows its own address: visible, not deceptive, so it is allowed.)
        remote: document.querySelectorAll('img[src*="evil.example"]').length
            + [...document.querySelectorAll('a[href*="evil.example"]')]
                .filter(a => a.textContent.trim() !== a.getAttribute('href')).length,
        js_links: document.querySelectorAll('a[href^="javascript:"]').length,
        scripts: [...document.querySelectorAll('script')].filter(s => s.textContent.includes('__xss')).length,
        handlers: document.querySelectorAll('[onerror]').length,
    })""")
    if markdown:
        injected.pop("remote")
    assert set(injected.values()) == {0}, f"{where}: {injected}"


def _visit(page, name: str) -> None:  # noqa: ANN001
    page.get_by_role("link", name=name).first.click()
    page.get_by_role("heading", name=name).first.wait_for(timeout=60_000)


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xss")
    url = f"sqlite:///{folder / 'xss.db'}"
    _hostile_database(url)
    port = free_port()
    app = start_app(url, port=port, log_path=folder / "app.log")
    try:
        wait_until_ready(app_url(port=port), 120, process=app)
        yield url, app_url(port=port), folder
    finally:
        stop_app(app)


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _page(browser, dialogs: list[str]):  # noqa: ANN001, ANN202
    page = browser.new_context().new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return page


def test_untrusted_text_is_inert_on_every_page(hostile_app, chromium):
    url, base, folder = hostile_app
    dialogs: list[str] = []
    clinician = _page(chromium, dialogs)
    login(clinician, base, "fresh", PASSWORD)
    clinician.get_by_text("Which reply is better?").wait_for(timeout=60_000)
    clinician.get_by_text(MARKER).filter(visible=True).first.wait_for(timeout=60_000)
    assert clinician.get_by_text("<script>window.__xss = 1</script>", exact=False).count() >= 1, \
        "the hostile text should be shown literally"
    _assert_inert(clinician, "compare")
    _visit(clinician, "My progress")
    _assert_inert(clinician, "progress")
    clinician.get_by_role("link", name="Guidelines").first.click()
    clinician.get_by_text(MARKER).filter(visible=True).first.wait_for(timeout=60_000)
    _assert_inert(clinician, "guidelines", markdown=True)

    admin = _page(chromium, dialogs)
    login(admin, base, "admin", PASSWORD, shown_as=NAME)
    for name in ("Live progress", "Data", "Analytics", "Annotators"):
        _visit(admin, name)
        _assert_inert(admin, name)

    report = run_cli("report", "--output", str(folder / "report"), "--db", url, "--bootstrap", "20")
    assert report.returncode == 0, report.stderr
    html = (folder / "report" / "report.html").read_text()
    assert "<script>window.__xss" not in html
    assert "<img src=x" not in html
    page = _page(chromium, dialogs)
    page.goto((folder / "report" / "report.html").as_uri())
    page.get_by_text(MARKER).filter(visible=True).first.wait_for(timeout=30_000)
    _assert_inert(page, "report.html")
    assert dialogs == []


def test_admin_confirmation_messages_are_inert(hostile_app, chromium):
    """The username an admin types comes back in the "Added …" message (st.success renders Markdown):
    a Markdown link in a username must not become a link there."""
    _url, base, _folder = hostile_app
    dialogs: list[str] = []
    admin = _page(chromium, dialogs)
    login(admin, base, "admin", PASSWORD, shown_as=NAME)
    _visit(admin, "Annotators")
    admin.get_by_role("textbox", name="Username").fill("[evil](https://evil.example/u)")
    admin.get_by_role("textbox", name="Initial password (min. 8 characters)").fill(PASSWORD)
    admin.get_by_role("button", name="Add annotator").click()
    admin.get_by_text("Added clinician").first.wait_for(timeout=60_000)
    _assert_inert(admin, "annotators after add")
    assert dialogs == []
    assert PASSWORD not in (_folder / "app.log").read_text(), "a password reached the app log"
