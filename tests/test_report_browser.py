"""The HTML report in a real Chromium: every section visible, every chart decoded, hostile text inert."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright
from sqlmodel import Session
from typer.testing import CliRunner

from analytics.report import SECTION_TITLES
from db.engine import make_engine
from db.migrate import upgrade
from tests.factories import HOSTILE_NAME, build_project, build_rich_project
from therapref.cli import app

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _report(tmp_path, name: str, build, *extra: str):  # noqa: ANN001, ANN202
    db = tmp_path / f"{name}.db"
    engine = make_engine(db)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        build(session)
    engine.dispose()
    out = tmp_path / f"{name}-report"
    result = CliRunner().invoke(app, ["report", "--output", str(out), "--db", str(db), "--bootstrap", "100", *extra])
    assert result.exit_code == 0, result.output
    assert "written to" in result.output
    return out / "report.html"


@pytest.mark.browser
def test_reports_open_in_chromium(tmp_path):
    demo = _report(tmp_path, "demo", lambda s: build_project(s, n_prompts=6, n_clinicians=3, judgments_required=3,
                                                             with_judgments=True))
    rich = _report(tmp_path, "rich", build_rich_project, "--min-shared", "5")
    dialogs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for path, n_images in ((demo, 6), (rich, 6)):
                page.goto(path.as_uri())
                for title in SECTION_TITLES.values():
                    if title != "Reward model vs judges":
                        heading = page.get_by_role("heading", name=title, exact=True)
                        heading.scroll_into_view_if_needed()
                        assert heading.is_visible(), title
                assert page.get_by_role("heading", name="Reward model vs judges").count() == 0
                images = page.locator("img")
                assert images.count() == n_images
                widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
                assert all(w > 300 for w in widths), widths
            # The rich report's hostile username is shown as text, and no script ran.
            assert page.get_by_text(HOSTILE_NAME).first.is_visible()
            assert page.locator("script").count() == 0
            assert page.get_by_role("heading", name="Win-rate matrix").is_visible()
        finally:
            browser.close()
    assert dialogs == []
