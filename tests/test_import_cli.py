"""``therapref import prompts|preferences`` through typer's CliRunner on real SQLite files."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from db.engine import make_engine
from db.models import Annotator, AuditEvent, Judgment
from tests.conftest import DIALOGFLOW, GABY
from tests.importers_helpers import expected_gaby, hh, write_jsonl
from therapref.cli import app

runner = CliRunner()


def _status(db: str) -> dict:
    result = runner.invoke(app, ["status", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["tables"]


@pytest.mark.parametrize("command", [["import"], ["import", "prompts"], ["import", "preferences"]], ids=" ".join)
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if len(command) == 2:
        assert "--format" in result.output
        assert "--db" in result.output
    if command[-1] == "preferences":
        assert "--dataset" in result.output


def test_import_prompts_then_reimport(tmp_path):
    db = str(tmp_path / "t.db")
    prompts, replies = expected_gaby(GABY)
    first = runner.invoke(app, ["import", "prompts", str(GABY), "--db", db])
    assert first.exit_code == 0, first.output
    assert f"added {prompts} prompts, {replies} responses" in first.stdout
    again = runner.invoke(app, ["import", "prompts", str(GABY), "--db", db, "--format", "openai-jsonl"])
    assert again.exit_code == 0
    assert "added 0;" in again.stdout
    assert f"already present {prompts} prompts, {replies} responses" in again.stdout
    tables = _status(db)
    assert (tables["prompt"], tables["response"]) == (prompts, replies)
    df = runner.invoke(app, ["import", "prompts", str(DIALOGFLOW), "--db", db])
    assert df.exit_code == 0
    assert "[dialogflow]" in df.stdout
    with Session(make_engine(db)) as session:
        actions = [e.action for e in session.exec(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == ["import.prompts"] * 3


def test_import_preferences_with_dataset(tmp_path):
    db = str(tmp_path / "t.db")
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "I panic at night.", "chosen": "That sounds frightening. When did it start?",
         "rejected": "Go to sleep.", "margin": 1.0}])
    result = runner.invoke(app, ["import", "preferences", str(path), "--dataset", "clinic-pilot", "--db", db])
    assert result.exit_code == 0, result.output
    assert "[trl, dataset clinic-pilot]" in result.stdout
    assert "1 judgments" in result.stdout
    hh_path = write_jsonl(tmp_path / "hh.jsonl.gz", [{"chosen": hh("Hi", "Hello, how are you?"),
                                                      "rejected": hh("Hi", "What.")}], gz=True)
    result = runner.invoke(app, ["import", "preferences", str(hh_path), "--db", db])
    assert result.exit_code == 0
    assert "[hh-rlhf]" in result.stdout
    with Session(make_engine(db)) as session:
        sources = {a.username: a.role for a in session.exec(select(Annotator))}
        assert sources == {"import:clinic-pilot": "source", "import:hh-rlhf": "source"}
        assert len(session.exec(select(Judgment)).all()) == 2
    csv_path = tmp_path / "cc.csv"
    csv_path.write_text("questionID,questionTitle,questionText,topic,answerText,upvotes\n"
                        "1,Sleep,I wake at 4am.,sleep,Try a wind-down routine.,3\n"
                        "1,Sleep,I wake at 4am.,sleep,Sleep less.,0\n"
                        "1,Sleep,I wake at 4am.,sleep,Notice what wakes you.,3\n", encoding="utf-8")
    cc = runner.invoke(app, ["import", "preferences", str(csv_path), "--db", db, "--format", "counselchat"])
    assert cc.exit_code == 0, cc.output
    assert "[counselchat-upvotes]" in cc.stdout
    assert "2 comparisons, 2 judgments" in cc.stdout


def test_bad_input_exits_nonzero_with_one_line_and_no_writes(tmp_path):
    db = str(tmp_path / "t.db")
    assert runner.invoke(app, ["import", "prompts", str(GABY), "--db", db]).exit_code == 0
    before = _status(db)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GABY.read_text().splitlines()[0].replace("name", "NEW name") + "\n{\"messages\": [\n")
    result = runner.invoke(app, ["import", "prompts", str(bad), "--db", db])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: {bad}, line 2: invalid JSON (Expecting value at column 15)"]
    wrong = runner.invoke(app, ["import", "preferences", str(GABY), "--db", db, "--format", "dialogflow"])
    assert wrong.exit_code == 1
    assert "not a preferences format" in wrong.stderr
    missing = runner.invoke(app, ["import", "prompts", str(tmp_path / "nope.jsonl"), "--db", db])
    assert missing.exit_code == 1
    assert "no such file" in missing.stderr
    tables = _status(db)
    assert tables == before
