"""Core commands through typer's CliRunner on real SQLite files (and PostgreSQL for init/status)."""

from __future__ import annotations

import json
import sqlite3

from sqlmodel import Session, select
from typer.testing import CliRunner

from db.engine import make_engine
from db.models import Annotator, AuditEvent
from therapref.cli import app

runner = CliRunner()
PASSWORD = "a-long-enough-password"

def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("therapref ")


def test_init_upgrade_status(tmp_path):
    db = str(tmp_path / "t.db")
    result = runner.invoke(app, ["init", "--db", db])
    assert result.exit_code == 0, result.output
    assert "Database ready" in result.output
    result = runner.invoke(app, ["db", "upgrade", "--db", db])
    from db.migrate import head_revision

    assert result.exit_code == 0
    assert f"-> {head_revision()}" in result.output
    result = runner.invoke(app, ["status", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tables"]["prompt"] == 0
    assert set(report) == {"tables", "by_source", "by_candidate"}
    text = runner.invoke(app, ["status", "--db", db])
    assert "Tables:" in text.output
    assert "prompt" in text.output


def test_status_on_postgres(postgres_url):
    result = runner.invoke(app, ["status", "--db", postgres_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tables"]["judgment"] == 0


def test_database_url_from_env(tmp_path, monkeypatch):
    db = tmp_path / "env.db"
    monkeypatch.setenv("THERAPREF_DATABASE_URL", f"sqlite:///{db}")
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    assert db.exists()


def test_annotators_lifecycle(tmp_path):
    db = str(tmp_path / "t.db")
    add = runner.invoke(app, ["annotators", "add", "dr.kim", "--role", "admin", "--credential", "LCSW",
                              "--password-stdin", "--db", db], input=PASSWORD + "\n")
    assert add.exit_code == 0, add.output
    assert PASSWORD not in add.output
    dup = runner.invoke(app, ["annotators", "add", "dr.kim", "--password-stdin", "--db", db], input=PASSWORD + "\n")
    assert dup.exit_code == 1
    assert "already exists" in dup.output
    short = runner.invoke(app, ["annotators", "add", "x", "--password-stdin", "--db", db], input="abc\n")
    assert short.exit_code == 1
    assert "at least" in short.output
    prompted = runner.invoke(app, ["annotators", "add", "nurse.jo", "--db", db],
                             input=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output
    listing = runner.invoke(app, ["annotators", "list", "--db", db])
    assert "dr.kim" in listing.output
    assert "admin" in listing.output
    assert "nurse.jo" in listing.output
    assert runner.invoke(app, ["annotators", "deactivate", "nurse.jo", "--db", db]).exit_code == 0
    assert "inactive" in runner.invoke(app, ["annotators", "list", "--db", db]).output
    reset = runner.invoke(app, ["annotators", "reset-password", "dr.kim", "--password-stdin", "--db", db],
                          input="another-long-password\n")
    assert reset.exit_code == 0, reset.output
    missing = runner.invoke(app, ["annotators", "deactivate", "ghost", "--db", db])
    assert missing.exit_code == 1
    assert "no annotator" in missing.output
    engine = make_engine(db)
    with Session(engine) as session:
        hashes = [a.password_hash for a in session.exec(select(Annotator))]
        actions = [e.action for e in session.exec(select(AuditEvent))]
    assert all(h.startswith("$argon2") for h in hashes)
    assert "annotator.add" in actions
    assert "annotator.deactivate" in actions
    assert "annotator.reset_password" in actions
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert PASSWORD not in dump
    assert "another-long-password" not in dump


def test_backup(tmp_path):
    db = str(tmp_path / "t.db")
    runner.invoke(app, ["annotators", "add", "dr.kim", "--password-stdin", "--db", db], input=PASSWORD + "\n")
    target = tmp_path / "copy.db"
    result = runner.invoke(app, ["backup", str(target), "--db", db])
    assert result.exit_code == 0, result.output
    copy = sqlite3.connect(target)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("select username from annotator").fetchall() == [("dr.kim",)]
    again = runner.invoke(app, ["backup", str(target), "--db", db])
    assert again.exit_code == 1
    assert "exists" in again.output
    assert runner.invoke(app, ["backup", str(target), "--db", db, "--force"]).exit_code == 0
    nowhere = runner.invoke(app, ["backup", str(tmp_path / "no" / "such" / "dir.db"), "--db", db])
    assert nowhere.exit_code == 1
    assert "not a directory" in nowhere.output


def test_backup_refuses_postgres(postgres_url, tmp_path):
    result = runner.invoke(app, ["backup", str(tmp_path / "x.db"), "--db", postgres_url])
    assert result.exit_code == 1
    assert "pg_dump" in result.output


def test_unreachable_database_is_one_line(tmp_path):
    result = runner.invoke(app, ["status", "--db", "postgresql://nobody@127.0.0.1:1/none"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: database error:")
    assert "Traceback" not in result.output


def test_help_shows_no_type_after_a_flag_and_every_option_with_its_help():
    """``--version``, ``--json``, ``--lora/--no-lora`` take no value: their help row shows no ``<bool>``;
    options that take one still show their type, and every option is listed with its help."""
    root = runner.invoke(app, ["--help"], terminal_width=200)
    assert root.exit_code == 0 and "--version" in root.output and "<bool>" not in root.output
    status = runner.invoke(app, ["status", "--help"], terminal_width=200)
    json_row = next(line for line in status.output.splitlines() if "--json" in line)
    assert "<bool>" not in json_row and "Print one JSON object." in json_row
    assert "<str>" in next(line for line in status.output.splitlines() if "--db" in line)
    group = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"})
    assert "locally with TRL" in group.output and "hosted OpenAI job" in group.output  # `finetune local` trains here
    from typer.main import get_command

    from tests.test_docs import COMMANDS

    for words in COMMANDS:
        shown = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "400"})
        assert shown.exit_code == 0 and "<bool>" not in shown.output, words
        command = get_command(app)
        for word in words:
            command = command.commands[word]
        ctx = command.make_context(" ".join(words), ["--help"], resilient_parsing=True)
        for param in command.get_params(ctx):
            if param.param_type_name == "option" and not param.hidden:
                assert param.opts[0] in shown.output, (words, param.opts[0])
                assert (param.help or "").strip(), (words, param.opts[0], "has no help")
