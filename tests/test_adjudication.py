"""Adjudication on a real SQLite file and a real PostgreSQL server: migration 0012 up and down with
data, the leads' queue (the disagreement rule), recording a final label with its audit event, bad
input leaving nothing written, and role ``lead`` through ``therapref annotators add``."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from typer.testing import CliRunner

from db.adjudication import (
    AdjudicationError,
    adjudication_queue,
    adjudications,
    dispute,
    record_adjudication,
)
from db.auth import AccountError, create_annotator
from db.crud import add_judgment, get_or_create_source_annotator
from db.engine import make_engine
from db.migrate import current_revision, head_revision, upgrade
from db.models import Adjudication, Annotator, AuditEvent, Judgment
from tests.factories import PASSWORD, build_project
from therapref.cli import app

pytestmark = pytest.mark.postgres


def disputed_project(session: Session):
    """build_project with 3 clinicians and a lead on 4 comparisons:
    c0 opposite preferences (a, a, b), c1 agreement (a, a), c2 one flag on B and none from another,
    c3 a clinician against an imported source (no dispute: sources do not count)."""
    project = build_project(session, n_prompts=4, n_clinicians=3)
    lead = create_annotator("lead1", PASSWORD, session=session, role="lead", display_name="Dr Lead")
    c0, c1, c2, c3 = project.comparisons
    k0, k1, k2 = project.clinicians
    for who, pref in ((k0, "a"), (k1, "a"), (k2, "b")):
        add_judgment(c0, who, pref, session=session, strength=2, rationale=f"{who.username} on c0")
    add_judgment(c1, k0, "a", session=session)
    add_judgment(c1, k1, "a", session=session)
    add_judgment(c2, k0, "a", session=session, flags_b=["dismissive"])
    add_judgment(c2, k1, "a", session=session)
    add_judgment(c3, k0, "a", session=session)
    add_judgment(c3, get_or_create_source_annotator("hh", session=session), "b", session=session)
    session.commit()
    return project, lead


def test_queue_record_and_audit(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project, lead = disputed_project(session)
        c0, _c1, c2, _c3 = project.comparisons
        assert adjudication_queue(session=session) == [c0.id, c2.id]  # oldest first
        view = dispute(c0.id, session=session)
        assert [(j.annotator, j.preferred) for j in view.judgments] == [("clin0", "a"), ("clin1", "a"), ("clin2", "b")]
        assert view.majority == "a" and view.judgments[2].rationale == "clin2 on c0"
        row = record_adjudication(c0.id, session=session, lead_id=lead.id, preferred="b", strength=3,
                                  flags_a=["dismissive"], note="B names the risk.")
        session.commit()
        assert adjudication_queue(session=session) == [c2.id]
        stored = adjudications(session=session)[c0.id]
        assert (stored.preferred, stored.strength, stored.flags_a, stored.flags_b, stored.note) == \
            ("b", 3, ["dismissive"], [], "B names the risk.")
        assert row.annotator_id == lead.id
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "adjudication.record")).one()
        assert (event.actor, event.target) == ("lead1", f"comparison:{c0.id}")
        assert event.details["majority"] == "a" and event.details["overturned"] is True
        # An admin may adjudicate too.
        record_adjudication(c2.id, session=session, lead_id=project.admin.id, preferred="a")
        session.commit()
        assert adjudication_queue(session=session) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"preferred": "left"}, "preferred must be one of a, b, tie, both_bad, not 'left'"),
    ({"preferred": "a", "strength": 5}, "strength must be 1, 2 or 3, not 5"),
    ({"preferred": "tie", "strength": 2}, "a strength applies only when A or B is preferred"),
    ({"preferred": "a", "flags_b": ["<script>"]}, "unknown safety flag '<script>'"),
    ({"preferred": "a", "note": "x" * 4001}, "the note is longer than 4000 characters"),
])
def test_bad_input_writes_nothing(engine, kwargs, message):
    with Session(engine, expire_on_commit=False) as session:
        project, lead = disputed_project(session)
        with pytest.raises(AdjudicationError, match=message.replace("(", r"\(").replace("[", r"\[")):
            record_adjudication(project.comparisons[0].id, session=session, lead_id=lead.id, **kwargs)
        session.rollback()
        assert session.exec(select(Adjudication)).all() == []
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "adjudication.record")).all() == []


def test_refusals(engine):
    with Session(engine, expire_on_commit=False) as session:
        project, lead = disputed_project(session)
        c0, c1, _c2, c3 = project.comparisons
        cases = [
            (c0.id, project.clinicians[0].id, "only an active lead or admin may adjudicate"),
            (c1.id, lead.id, f"comparison {c1.id} is not in dispute"),
            (c3.id, lead.id, f"comparison {c3.id} is not in dispute"),
            (9999, lead.id, "no comparison 9999"),
        ]
        for comparison_id, who, message in cases:
            with pytest.raises(AdjudicationError, match=message):
                record_adjudication(comparison_id, session=session, lead_id=who, preferred="a")
        record_adjudication(c0.id, session=session, lead_id=lead.id, preferred="a")
        with pytest.raises(AdjudicationError, match="already adjudicated"):
            record_adjudication(c0.id, session=session, lead_id=lead.id, preferred="b")
        session.commit()
        assert len(session.exec(select(Adjudication)).all()) == 1


def test_migration_0012_up_and_down_with_data(any_db_url):
    """Up: role lead and the adjudication table; down refuses while leads or adjudications exist, and
    once they are gone goes to 0011 keeping every account and judgment; up again works."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    from db.migrate import alembic_config

    engine = make_engine(any_db_url)
    upgrade(engine)
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert [d for d in diffs if "adjudication" in repr(d).lower() or "role" in repr(d).lower()] == []
    with Session(engine, expire_on_commit=False) as session:
        project, lead = disputed_project(session)
        record_adjudication(project.comparisons[0].id, session=session, lead_id=lead.id, preferred="b")
        session.commit()
    with engine.connect() as connection:
        before = [tuple(r) for r in connection.execute(text(
            "SELECT comparison_id, annotator_id, preferred, rationale FROM judgment ORDER BY id"))]
    command.downgrade(alembic_config(engine), "0012")  # the later migrations first (each is its own step)
    with pytest.raises(RuntimeError, match="adjudications exist"):
        command.downgrade(alembic_config(engine), "0011")
    assert current_revision(engine) == "0012"
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM adjudication"))
    with pytest.raises(RuntimeError, match="lead accounts exist"):
        command.downgrade(alembic_config(engine), "0011")
    with engine.begin() as connection:
        connection.execute(text("UPDATE annotator SET role = 'clinician' WHERE role = 'lead'"))
    command.downgrade(alembic_config(engine), "0011")
    assert current_revision(engine) == "0011"
    assert "adjudication" not in inspect(engine).get_table_names()
    with engine.connect() as connection:
        after = [tuple(r) for r in connection.execute(text(
            "SELECT comparison_id, annotator_id, preferred, rationale FROM judgment ORDER BY id"))]
        names = {r[0] for r in connection.execute(text("SELECT username FROM annotator"))}
        with pytest.raises(IntegrityError):  # the old role check is back
            connection.execute(text("UPDATE annotator SET role = 'lead' WHERE username = 'lead1'"))
    assert after == before and {"lead1", "clin0", "admin"} <= names
    assert upgrade(engine) == head_revision()
    with Session(engine, expire_on_commit=False) as session:
        lead = session.exec(select(Annotator).where(Annotator.username == "lead1")).one()
        lead.role = "lead"
        session.add(lead)
        session.commit()
        record_adjudication(project.comparisons[0].id, session=session, lead_id=lead.id, preferred="a")
        session.commit()
        assert len(session.exec(select(Judgment)).all()) == len(before)
    engine.dispose()


def test_cli_adds_a_lead_and_rejects_a_bad_role(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    ok = runner.invoke(app, ["annotators", "add", "dr.lead", "--role", "lead", "--password-stdin", "--db", url],
                       input=PASSWORD + "\n")
    assert ok.exit_code == 0, ok.output
    assert "Added lead 'dr.lead'." in ok.output
    bad = runner.invoke(app, ["annotators", "add", "dr.x", "--role", "boss", "--password-stdin", "--db", url],
                        input=PASSWORD + "\n")
    assert bad.exit_code != 0
    assert bad.output.strip().splitlines()[-1].endswith("role must be clinician, lead or admin, not 'boss'")
    engine = make_engine(url)
    with Session(engine) as session:
        assert [a.username for a in session.exec(select(Annotator)).all()] == ["dr.lead"]
        with pytest.raises(AccountError):
            create_annotator("x", PASSWORD, session=session, role="source")
    engine.dispose()


# --- Adjudicated labels win: reward pairs and exports ---------------------------------------------


def _texts(project, comparison):
    """(warm text, terse text) of a build_project comparison (warm is its A: created first)."""
    prompt_id = comparison.prompt_id
    return project.responses[(prompt_id, "warm")].text, project.responses[(prompt_id, "terse")].text


def test_training_pairs_honour_adjudication(any_engine):
    from reward.data import pairs_from_db

    with Session(any_engine, expire_on_commit=False) as session:
        project, lead = disputed_project(session)
        c0, c1, c2, c3 = project.comparisons
        _pairs, stats = pairs_from_db(session=session)
        assert (stats.aggregation, stats.adjudicated) == ("judgment", 0)  # auto, with no adjudication yet
        record_adjudication(c0.id, session=session, lead_id=lead.id, preferred="b", strength=3)
        record_adjudication(c2.id, session=session, lead_id=lead.id, preferred="a", flags_a=["harmful_advice"])
        session.commit()
        pairs, stats = pairs_from_db(session=session, margin_mapping={1: 0.0, 2: 0.5, 3: 1.0})
        assert (stats.aggregation, stats.adjudicated, stats.unsafe_chosen) == ("adjudicated", 2, 1)
        chosen = {p.comparison_id: (p.chosen, p.margin) for p in pairs}
        warm0, terse0 = _texts(project, c0)
        assert chosen[c0.id] == (terse0, 1.0)  # the lead overturned the majority (a, a, b): one pair
        assert c2.id not in chosen  # the lead flagged the reply it preferred: never chosen
        assert chosen[c1.id][0] == _texts(project, c1)[0] and chosen[c3.id][0] == _texts(project, c3)[0]
        assert len(pairs) == 3
        # Asked for, the votes alone: the majority of c0 and both votes of c2 again.
        pairs, stats = pairs_from_db(session=session, aggregation="majority")
        assert stats.aggregation == "majority" and {p.comparison_id: p.chosen for p in pairs}[c0.id] == warm0
        assert c2.id in {p.comparison_id for p in pairs}
        # Imported data alone: a lead's label does not speak for it.
        _pairs, stats = pairs_from_db(session=session, sources="imported")
        assert stats.aggregation == "judgment"


def _jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exports_honour_adjudication(any_engine, tmp_path):
    from exports.run import ExportOptions, run_export

    with Session(any_engine, expire_on_commit=False) as session:
        project, lead = disputed_project(session)
        c0, _c1, c2, _c3 = project.comparisons
        record_adjudication(c0.id, session=session, lead_id=lead.id, preferred="b")
        record_adjudication(c2.id, session=session, lead_id=lead.id, preferred="b")  # and no flag on B
        session.commit()
    warm0, terse0 = _texts(project, c0)
    warm2, terse2 = _texts(project, c2)

    def chosen(rows):
        return {row["prompt"][-1]["content"]: row["chosen"][0]["content"] for row in rows}

    result = run_export("dpo", tmp_path / "dpo.jsonl", engine=any_engine)
    assert (result.counts["aggregation"], result.counts["adjudicated"]) == ("adjudicated", 2)
    rows = chosen(_jsonl(result.path))
    prompt0 = project.prompts[0].messages[-1]["content"]
    prompt2 = project.prompts[2].messages[-1]["content"]
    # c0: the lead's B over the majority's A; c2: the lead's flags replace a clinician's flag on B.
    assert rows[prompt0] == terse0 and rows[prompt2] == terse2 and len(rows) == 4
    votes = run_export("dpo", tmp_path / "votes.jsonl", engine=any_engine,
                       options=ExportOptions(aggregation="majority"))
    rows = chosen(_jsonl(votes.path))
    assert rows[prompt0] == warm0 and rows[prompt2] == warm2 and votes.counts["aggregation"] == "majority"
    sft = run_export("sft", tmp_path / "sft.jsonl", engine=any_engine)
    replies = {row["messages"][-2]["content"]: row["messages"][-1]["content"] for row in _jsonl(sft.path)}
    assert replies[prompt0] == terse0 and sft.counts["adjudicated"] >= 2


def test_export_command_says_so_and_rejects_a_bad_aggregation(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project, lead = disputed_project(session)
        record_adjudication(project.comparisons[0].id, session=session, lead_id=lead.id, preferred="b")
        session.commit()
    runner = CliRunner()
    out = tmp_path / "dpo.jsonl"
    ok = runner.invoke(app, ["export", "dpo", "--output", str(out), "--db", sqlite_url])
    assert ok.exit_code == 0, ok.output
    assert "Aggregation: adjudicated (1 adjudicated comparisons: the lead's label replaces the votes)." in ok.output
    bad = runner.invoke(app, ["export", "dpo", "--output", str(tmp_path / "bad.jsonl"), "--aggregation", "lead",
                              "--db", sqlite_url])
    assert bad.exit_code != 0
    assert bad.output.strip().splitlines() == ["Error: --aggregation 'lead' is not one of auto, adjudicated, majority"]
    assert not (tmp_path / "bad.jsonl").exists()
    engine.dispose()


def test_report_counts_adjudications_apart(engine, tmp_path):
    from analytics.config import AnalyticsConfig
    from analytics.report import generate_report

    with Session(engine, expire_on_commit=False) as session:
        project, lead = disputed_project(session)
        c0 = project.comparisons[0]
        config = AnalyticsConfig(n_bootstrap=20)
        before, _ = generate_report(tmp_path / "before", session=session, config=config)
        record_adjudication(c0.id, session=session, lead_id=lead.id, preferred="b")
        session.commit()
        summary, files = generate_report(tmp_path / "after", session=session, config=config)
    assert before.adjudication.as_dict() == {"adjudicated": 0, "overturned": 0, "no_majority": 0, "waiting": 2}
    assert summary.adjudication.as_dict() == {"adjudicated": 1, "overturned": 1, "no_majority": 0, "waiting": 1}
    # A lead's label is not one more judgment: the agreement over judgments is unchanged.
    assert summary.n_judgments == before.n_judgments
    assert summary.agreement.preference.alpha == before.agreement.preference.alpha
    markdown = (tmp_path / "after" / "report.md").read_text()
    assert "| Lead overturned the clinicians' majority | 1 |" in markdown
    assert "| Disputed, waiting for a lead | 1 |" in markdown
