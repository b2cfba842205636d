"""Idempotent submission: a double click, a browser retry after the first commit, a re-sent form
(page refresh that shows the same rendering) and two requests racing with one token all end as ONE
judgment, on a SQLite file and a real PostgreSQL server. Each click is its own transaction, as in
the app."""

from __future__ import annotations

import threading

import pytest
from sqlmodel import Session

from db.assignment import ReservationNotFound, next_comparison, submit_judgment
from db.engine import session_scope
from tests.factories import build_project
from tests.reliability_helpers import assert_sound, count

pytestmark = pytest.mark.postgres


@pytest.fixture
def project(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        return build_project(session, n_prompts=4, n_clinicians=3, judgments_required=2)


def _next(engine, annotator_id):
    with session_scope(engine) as session:
        return next_comparison(annotator_id, session=session)


def _submit(engine, token, annotator_id, preferred="left", strength=2, **extra):
    with session_scope(engine) as session:
        judgment, created = submit_judgment(token, session=session, annotator_id=annotator_id,
                                            preferred=preferred, strength=strength, **extra)
        return judgment.id, judgment.preferred, created


def test_double_submit_same_token_is_one_judgment(any_engine, project):
    me = project.clinicians[0].id
    shown = _next(any_engine, me)
    first = _submit(any_engine, shown.token, me)
    second = _submit(any_engine, shown.token, me)
    assert first[2] is True
    assert second[2] is False
    assert first[0] == second[0]
    assert count(any_engine, "judgment") == 1
    assert_sound(any_engine)


def test_retry_after_commit_with_other_answer_keeps_the_first(any_engine, project):
    """The browser did not see the reply and re-sends, even with a changed choice: the first stands."""
    me = project.clinicians[1].id
    shown = _next(any_engine, me)
    jid, preferred, created = _submit(any_engine, shown.token, me, "left", 3)
    again = _submit(any_engine, shown.token, me, "right", 1, rationale="changed my mind")
    assert created
    assert again == (jid, preferred, False)
    assert count(any_engine, "judgment") == 1
    with session_scope(any_engine) as session:
        from db.models import Judgment

        stored = session.get(Judgment, jid)
        assert stored.strength == 3
        assert stored.rationale == ""
        assert stored.preferred == shown.shown_left  # "left" maps to the side that was on the left


def test_resent_form_after_refresh_is_one_judgment(any_engine, project):
    """A refresh before submitting shows the same pair with the same token; submitting the form from
    both renderings stores one judgment, and the next fetch moves on to another pair."""
    me = project.clinicians[2].id
    first_render = _next(any_engine, me)
    refresh = _next(any_engine, me)
    assert refresh.token == first_render.token
    assert refresh.comparison_id == first_render.comparison_id
    assert _submit(any_engine, first_render.token, me)[2] is True
    assert _submit(any_engine, refresh.token, me)[2] is False
    following = _next(any_engine, me)
    assert following.comparison_id != first_render.comparison_id
    assert count(any_engine, "judgment") == 1
    assert count(any_engine, "reservation") == 1  # only the new pair is held


def _race(engine, token: str, annotator_id: int, n: int = 8) -> list:
    barrier = threading.Barrier(n)
    outcomes: list = []

    def click() -> None:
        barrier.wait()
        try:
            outcomes.append(_submit(engine, token, annotator_id))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(exc)

    threads = [threading.Thread(target=click) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_racing_requests_with_one_token(any_engine, project):
    """Eight requests with one token at the same instant (separate connections): one created."""
    me = project.clinicians[0].id
    shown = _next(any_engine, me)
    outcomes = _race(any_engine, shown.token, me)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert errors == []
    assert sum(o[2] for o in outcomes) == 1
    assert len({o[0] for o in outcomes}) == 1
    assert count(any_engine, "judgment") == 1
    assert_sound(any_engine)


def test_racing_requests_that_fill_the_comparison(any_engine):
    """The same race on a comparison's last open place (overlap 1): the retries must get the stored
    judgment back, not "another clinician completed this pair first"."""
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=2, n_clinicians=1, judgments_required=1)
    me = project.clinicians[0].id
    shown = _next(any_engine, me)
    outcomes = _race(any_engine, shown.token, me)
    errors = [repr(o) for o in outcomes if isinstance(o, Exception)]
    assert errors == [], errors
    assert sum(o[2] for o in outcomes) == 1
    assert len({o[0] for o in outcomes}) == 1
    assert count(any_engine, "judgment") == 1
    assert_sound(any_engine)


def test_someone_elses_token_is_rejected_and_writes_nothing(any_engine, project):
    mine, theirs = project.clinicians[0].id, project.clinicians[1].id
    shown = _next(any_engine, mine)
    with pytest.raises(ReservationNotFound):
        _submit(any_engine, shown.token, theirs)
    with pytest.raises(ReservationNotFound):
        _submit(any_engine, "a-forged-token", mine)
    assert count(any_engine, "judgment") == 0
    _submit(any_engine, shown.token, mine)
    with pytest.raises(ReservationNotFound):  # a used token cannot be replayed by someone else either
        _submit(any_engine, shown.token, theirs)
    assert count(any_engine, "judgment") == 1
