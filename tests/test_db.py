"""Database layer on a real SQLite file and a real PostgreSQL server: migrations, writes,
queries and every constraint of the data model."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from db.accounts import set_account_active
from db.audit import audit
from db.auth import AccountError, authenticate, create_annotator, is_locked, set_password
from db.crud import (
    DataError,
    add_comparison,
    add_judgment,
    add_response,
    get_or_create_prompt,
    get_or_create_source_annotator,
)
from db.engine import make_engine, normalize_url, read_only_engine
from db.guidelines import add_guideline_version, current_guideline
from db.migrate import current_revision, head_revision, is_up_to_date, upgrade
from db.models import Comparison, Judgment, Prompt, Response, utcnow
from db.status import counts_by_candidate, counts_by_source, database_fingerprint, table_counts
from tests.factories import PASSWORD, build_project

pytestmark = pytest.mark.postgres

USER = [{"role": "user", "content": "I feel anxious before every meeting."}]


def _counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return table_counts(session=session)


def test_migrations_from_empty(any_db_url):
    engine = make_engine(any_db_url)
    assert current_revision(engine) is None
    assert upgrade(engine) == head_revision()
    assert is_up_to_date(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"annotator", "prompt", "candidatemodel", "response", "comparison", "judgment",
            "rewardmodelrun", "exportrun", "auditevent", "guidelineversion", "reservation"} <= tables
    assert upgrade(engine) == head_revision()  # idempotent


def test_migrations_match_the_models(any_engine):
    """Autogenerate finds nothing to do: every model change came with a migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    with any_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []


MARGIN_RATIONALES = [  # (comparison index, annotator, rationale as the importers wrote it up to 0002)
    (0, "trl", "imported from trl (p.jsonl line 4); margin=0.5"),
    (1, "trl", "imported from trl (odd; margin=9 (x).jsonl line 2); margin=-1.5e-05"),
    (2, "trl", "imported from trl (p.jsonl line 5)"),  # the dataset gave no margin
    (3, "counselchat-upvotes", "imported from counselchat-upvotes (counsel_chat.csv rows 12 > 15); margin=3.0"),
    (0, "clin0", "felt warmer; margin=2.5"),  # a clinician's own words: never read as a margin
    (1, "clin0", ""),
]


def _judgments(engine) -> list[tuple]:
    with engine.connect() as connection:
        columns = "rationale, margin" if "margin" in _judgment_columns(engine) else "rationale"
        return [tuple(row) for row in connection.execute(text(f"SELECT {columns} FROM judgment ORDER BY id"))]


def _judgment_columns(engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("judgment")}


def test_migration_0003_moves_imported_margins_into_their_column_and_back(any_db_url):
    """Existing imported judgments keep their margin across the upgrade (into ``judgment.margin``,
    out of the rationale) and the downgrade (back into the rationale, character for character)."""
    from alembic import command

    from db.migrate import alembic_config

    engine = make_engine(any_db_url)
    upgrade(engine)  # the factories write today's models; the data is then taken down to 0002
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=4, n_clinicians=1)
        who = {"clin0": project.clinicians[0].id}
        for dataset in ("trl", "counselchat-upvotes"):
            who[dataset] = get_or_create_source_annotator(dataset, session=session).id
        session.commit()
        comparisons = [c.id for c in project.comparisons]
    command.downgrade(alembic_config(engine), "0002")
    with engine.begin() as connection:  # raw SQL: at 0002 the table has no margin column
        for index, annotator, rationale in MARGIN_RATIONALES:
            connection.execute(text("INSERT INTO judgment (comparison_id, annotator_id, preferred, shown_left, "
                                    "rationale, created_at) VALUES (:c, :a, 'a', 'a', :r, :t)"),
                               {"c": comparisons[index], "a": who[annotator], "r": rationale, "t": utcnow()})
    before = _judgments(engine)

    upgraded = [("imported from trl (p.jsonl line 4)", 0.5),
                ("imported from trl (odd; margin=9 (x).jsonl line 2)", -1.5e-05),
                ("imported from trl (p.jsonl line 5)", None),
                ("imported from counselchat-upvotes (counsel_chat.csv rows 12 > 15)", 3.0),
                ("felt warmer; margin=2.5", None), ("", None)]
    assert upgrade(engine) == head_revision()
    assert _judgments(engine) == upgraded

    command.downgrade(alembic_config(engine), "0002")
    assert current_revision(engine) == "0002"
    assert "margin" not in _judgment_columns(engine)
    assert _judgments(engine) == before
    with pytest.raises(IntegrityError), engine.begin() as connection:  # SQLite rebuilt the table: checks kept
        connection.execute(text("INSERT INTO judgment (comparison_id, annotator_id, preferred, shown_left, "
                                "rationale, created_at) VALUES (:c, :a, 'left', 'a', '', :t)"),
                           {"c": comparisons[3], "a": who["clin0"], "t": utcnow()})

    assert upgrade(engine) == head_revision()
    assert _judgments(engine) == upgraded
    with Session(engine) as session:
        margins = session.exec(select(Judgment.margin).order_by(Judgment.id)).all()
    assert margins == [m for _, m in upgraded]


def test_sqlite_pragmas(engine):
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    with read_only_engine(engine).connect() as conn:
        assert conn.execute(text("select count(*) from prompt")).scalar() == 0


def test_normalize_url():
    assert normalize_url(None) == "sqlite:///therapref.db"
    assert normalize_url("postgresql://x@h/db").startswith("postgresql+psycopg://")


def test_write_and_query_functions(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=3, with_judgments=True)
        prompt, created = get_or_create_prompt(project.prompts[0].messages, session=session,
                                               system_prompt=project.prompts[0].system_prompt)
        assert not created
        assert prompt.id == project.prompts[0].id
        counts = table_counts(session=session)
        assert counts["prompt"] == 3
        assert counts["response"] == 6
        assert counts["comparison"] == 3
        assert counts["judgment"] == 6
        by_source = counts_by_source(session=session)
        assert by_source["prompts"] == {"test": 3}
        assert by_source["judgments"] == {"clinicians": 6}
        assert {r["name"]: r["responses"] for r in counts_by_candidate(session=session)} == {"terse": 3, "warm": 3}
        assert session.get(Comparison, project.comparisons[0].id).judgments_count == 2
        fingerprint = database_fingerprint(session=session)
        assert len(fingerprint) == 16
        source = get_or_create_source_annotator("counselchat-upvotes", session=session)
        assert source.username == "import:counselchat-upvotes"
        assert source.role == "source"
        assert get_or_create_source_annotator("counselchat-upvotes", session=session).id == source.id
        audit("admin", "export", session=session, target="x.jsonl", details={"rows": 3})
        v2 = add_guideline_version("Version two", session=session)
        assert v2.version == 2
        assert current_guideline(session=session).text == "Version two"
        session.commit()
        assert database_fingerprint(session=session) != fingerprint


def test_idempotent_writes(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=1)
        comparison = project.comparisons[0]
        clinician = project.clinicians[0]
        first, created = add_judgment(comparison, clinician, "a", session=session, idempotency_key="k1")
        assert created
        assert first in session
        assert comparison.judgments_count == 1  # the caller's loaded comparison shows the new count
        again, created = add_judgment(comparison, clinician, "b", session=session, idempotency_key="k1")
        assert not created
        assert again.id == first.id
        assert again.preferred == "a"
        other, created = add_judgment(comparison, clinician, "b", session=session)
        assert not created
        assert other.id == first.id
        with pytest.raises(DataError, match="margin must be a finite number"):
            add_judgment(comparison, project.admin, "a", session=session, margin=float("nan"))
        session.commit()
        assert len(session.exec(select(Judgment)).all()) == 1
        assert session.get(Comparison, comparison.id).judgments_count == 1
        prompt = project.prompts[0]
        warm = project.candidates[0]
        response, created = add_response(prompt, warm, project.responses[(prompt.id, "warm")].text + "  ",
                                         session=session)
        assert not created


def test_constraint_one_judgment_per_annotator(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=1)
        ids = (project.comparisons[0].id, project.clinicians[0].id)
    with Session(any_engine) as session:
        session.add(Judgment(comparison_id=ids[0], annotator_id=ids[1], preferred="a"))
        session.add(Judgment(comparison_id=ids[0], annotator_id=ids[1], preferred="b"))
        with pytest.raises(IntegrityError):
            session.commit()
    assert _counts(any_engine)["judgment"] == 0


def test_constraint_response_unique_text(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=1)
        existing = project.responses[(project.prompts[0].id, "warm")]
        session.add(Response(prompt_id=existing.prompt_id, candidate_model_id=existing.candidate_model_id,
                             text="dup", text_hash=existing.text_hash))
        with pytest.raises(IntegrityError):
            session.commit()


@pytest.mark.parametrize("case", ["same", "other_prompt", "reversed", "bad_preferred", "bad_strength"])
def test_constraint_comparison_and_judgment_checks(any_engine, case):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=2)
        p0, p1 = project.prompts
        r0 = project.responses[(p0.id, "warm")]
        r0b = project.responses[(p0.id, "terse")]
        r1 = project.responses[(p1.id, "warm")]
        before = table_counts(session=session)
        low, high = sorted((r0.id, r0b.id))
        rows = {
            "same": Comparison(prompt_id=p0.id, response_a_id=r0.id, response_b_id=r0.id),
            "other_prompt": Comparison(prompt_id=p0.id, response_a_id=min(r0.id, r1.id),
                                       response_b_id=max(r0.id, r1.id)),
            "reversed": Comparison(prompt_id=p0.id, response_a_id=high, response_b_id=low),
            "bad_preferred": Judgment(comparison_id=project.comparisons[0].id,
                                      annotator_id=project.clinicians[0].id, preferred="left"),
            "bad_strength": Judgment(comparison_id=project.comparisons[0].id,
                                     annotator_id=project.clinicians[0].id, preferred="a", strength=7),
        }
        session.add(rows[case])
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        assert table_counts(session=session) == before
        with pytest.raises(DataError):
            if case == "same":
                add_comparison(r0, r0, session=session)
            elif case == "other_prompt":
                add_comparison(r0, r1, session=session)
            elif case == "bad_preferred":
                add_judgment(project.comparisons[0], project.clinicians[0], "left", session=session)
            elif case == "bad_strength":
                add_judgment(project.comparisons[0], project.clinicians[0], "a", strength=7, session=session)
            else:
                raise DataError("reversed order is normalised by add_comparison")
        comparison, created = add_comparison(project.responses[(p0.id, "terse")], r0, session=session)
        assert not created
        assert comparison.response_a_id < comparison.response_b_id


def test_transaction_is_all_or_nothing(any_engine):
    before = _counts(any_engine)
    with pytest.raises(DataError), Session(any_engine) as session:
        get_or_create_prompt(USER, session=session, source="x")
        get_or_create_prompt([{"role": "assistant", "content": "no user turn"}], session=session)
        session.commit()
    assert _counts(any_engine) == before


def test_prompt_validation():
    from db.crud import validate_messages

    for bad in ([], [{"role": "system", "content": "x"}], [{"role": "user", "content": ""}],
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], ["text"]):
        with pytest.raises(DataError):
            validate_messages(bad)


def test_accounts_and_lockout(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        create_annotator("dr.lee", PASSWORD, session=session, role="admin", credential="PsyD")
        session.commit()
        with pytest.raises(AccountError):
            create_annotator("dr.lee", PASSWORD, session=session)
        with pytest.raises(AccountError):
            create_annotator("short", "abc", session=session)
        with pytest.raises(AccountError):
            create_annotator("x", PASSWORD, session=session, role="source")
        assert authenticate("dr.lee", PASSWORD, session=session).username == "dr.lee"
        assert authenticate("nobody", PASSWORD, session=session) is None
        for _ in range(5):
            assert authenticate("dr.lee", "wrong-password", session=session) is None
        assert is_locked("dr.lee", session=session)
        assert authenticate("dr.lee", PASSWORD, session=session) is None  # locked even with the right one
        set_password("dr.lee", "another-password-1", session=session)
        assert authenticate("dr.lee", "another-password-1", session=session) is not None
        set_account_active("dr.lee", False, session=session, actor="test")
        assert authenticate("dr.lee", "another-password-1", session=session) is None
        session.commit()
        stored = session.exec(text("select password_hash from annotator where username='dr.lee'")).scalar()
        assert stored.startswith("$argon2")
        assert "another-password-1" not in stored


def test_source_annotator_cannot_log_in(engine):
    with Session(engine) as session:
        get_or_create_source_annotator("hh-rlhf", session=session)
        session.commit()
        assert authenticate("import:hh-rlhf", "", session=session) is None


def test_prompt_hash_dedup(engine):
    with Session(engine) as session:
        a, created_a = get_or_create_prompt(USER, session=session, source="x")
        b, created_b = get_or_create_prompt([{"role": "user", "content": USER[0]["content"] + "  "}],
                                            session=session, source="y")
        c, created_c = get_or_create_prompt(USER, session=session, source="x", system_prompt="persona")
        assert created_a
        assert not created_b
        assert created_c
        assert a.id == b.id != c.id
        session.commit()
        assert len(session.exec(select(Prompt)).all()) == 2
