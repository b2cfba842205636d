"""Pairing replies into comparisons: cross-source only, budgets, seeded overlap, idempotent."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from candidates.pairing import make_pairs
from db.crud import DataError, add_response, get_or_create_candidate
from db.engine import session_scope
from db.models import AuditEvent, Comparison, Response
from tests.factories import add_prompts
from therapref.cli import app

SOURCES = ("alpha", "beta", "gamma")


def _seed(session: Session, n_prompts: int = 4) -> list:
    """``n_prompts`` prompts with one reply from each of three sources; the first prompt also has a
    second alpha reply; one extra prompt has replies from alpha only."""
    candidates = {name: get_or_create_candidate(name, session=session, provider="local")[0] for name in SOURCES}
    prompts = add_prompts(session, n_prompts + 1)
    for prompt in prompts[:n_prompts]:
        for name, candidate in candidates.items():
            add_response(prompt, candidate, f"{name} reply to prompt {prompt.id}", session=session)
    add_response(prompts[0], candidates["alpha"], "a second alpha reply", session=session)
    add_response(prompts[n_prompts], candidates["alpha"], "lonely", session=session)
    session.commit()
    return prompts


def _pairs(session: Session) -> list[tuple[Comparison, str, str]]:
    source = {r.id: r.candidate_model_id for r in session.exec(select(Response)).all()}
    return [(c, source[c.response_a_id], source[c.response_b_id]) for c in session.exec(select(Comparison)).all()]


def test_all_cross_source_pairs_once_and_idempotent(any_engine):
    with session_scope(any_engine) as session:
        _seed(session)
    with session_scope(any_engine) as session:
        summary = make_pairs(session=session, overlap=3, overlap_fraction=0.25, seed=5)
    # 3 prompts x 3 pairs, plus prompt 1 with 4 replies (2 alpha): 5 cross-source pairs; lonely prompt skipped.
    assert (summary.created, summary.prompts, summary.skipped_prompts, summary.overlap) == (14, 4, 1, 4)
    with Session(any_engine) as session:
        pairs = _pairs(session)
        assert len(pairs) == 14
        assert all(a != b for _, a, b in pairs)
        assert all(c.response_a_id < c.response_b_id for c, _, _ in pairs)
        required = Counter(c.judgments_required for c, _, _ in pairs)
        assert required == {1: 10, 3: 4}
        before = {c.id: c.judgments_required for c, _, _ in pairs}
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "pairs.make")).one()
    with session_scope(any_engine) as session:
        again = make_pairs(session=session, overlap=5, overlap_fraction=1.0, seed=9)
    assert (again.created, again.existing) == (0, 14)
    with Session(any_engine) as session:
        assert {c.id: c.judgments_required for c, _, _ in _pairs(session)} == before


def test_overlap_choice_is_seeded(engine, tmp_path):
    from db.engine import make_engine
    from db.migrate import upgrade

    chosen = []
    for eng in (engine, make_engine(tmp_path / "other.db")):
        upgrade(eng)
        with session_scope(eng) as session:
            _seed(session)
            make_pairs(session=session, overlap=2, overlap_fraction=0.5, seed=11)
        with Session(eng) as session:
            chosen.append(sorted((c.response_a_id, c.response_b_id) for c, _, _ in _pairs(session)
                                 if c.judgments_required == 2))
    assert chosen[0] == chosen[1]
    assert len(chosen[0]) == 7


def test_budget_spreads_model_pairs_and_tops_up(session):
    _seed(session, n_prompts=3)
    summary = make_pairs(session=session, budget=1, seed=0)
    session.commit()
    assert summary.created == 3
    pairs = _pairs(session)
    assert len({tuple(sorted((a, b))) for _, a, b in pairs}) == 3  # each model pair once across 3 prompts
    assert Counter(c.prompt_id for c, _, _ in pairs) == {p: 1 for p in Counter(c.prompt_id for c, _, _ in pairs)}
    more = make_pairs(session=session, budget=2, seed=0)
    session.commit()
    assert (more.created, more.existing) == (3, 3)
    assert set(Counter(c.prompt_id for c, _, _ in _pairs(session)).values()) == {2}


def test_candidate_filter_and_bad_arguments(session):
    _seed(session, n_prompts=2)
    summary = make_pairs(session=session, candidates=["alpha", "beta"])
    assert summary.created == 2 + 1  # prompt 1: two alpha replies x beta; prompt 2: alpha x beta
    with pytest.raises(DataError, match="unknown candidate"):
        make_pairs(session=session, candidates=["nobody"])
    with pytest.raises(DataError, match="overlap must be at least 1"):
        make_pairs(session=session, overlap=0)
    with pytest.raises(DataError, match="overlap fraction"):
        make_pairs(session=session, overlap_fraction=1.5)


def test_pairs_cli(engine):
    with session_scope(engine) as session:
        _seed(session, n_prompts=2)
    runner = CliRunner()
    db = engine.url.database
    result = runner.invoke(app, ["pairs", "--db", db, "--overlap", "2", "--overlap-fraction", "0.5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Created 8 comparisons over 2 prompts (0 already existed); 4 need 2 judgments")
    again = runner.invoke(app, ["pairs", "--db", db])
    assert again.exit_code == 0
    assert again.stdout.startswith("Created 0 comparisons over 2 prompts (8 already existed)")
    bad = runner.invoke(app, ["pairs", "--db", db, "--budget", "0"])
    assert bad.exit_code == 1
    assert "budget must be at least 1" in bad.stderr
