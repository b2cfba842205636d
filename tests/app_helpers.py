"""Helpers for the labeling-app tests (AppTest and browser)."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session

from db.crud import add_comparison, add_response, get_or_create_prompt
from db.engine import make_engine
from db.migrate import upgrade
from tests.factories import build_project

APP = Path(__file__).resolve().parent.parent / "labeling_app" / "app.py"
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
            comparison, _ = add_comparison(hostile, plain, session=session, judgments_required=judgments_required)
            project.comparisons.insert(0, comparison)
            session.commit()
    return engine, project
