"""``therapref export`` from the command line: success output and the bad cases (one line, exit 1,
no partial file, no ExportRun)."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from db.models import ExportRun
from tests.factories import build_scenario
from therapref.cli import app

runner = CliRunner()


@pytest.fixture
def db(engine, sqlite_url):
    with Session(engine, expire_on_commit=False) as session:
        build_scenario(session)
    return sqlite_url


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def leftovers(folder, stem):
    return sorted(p.name for p in folder.iterdir() if stem in p.name)


def export_runs(engine):
    with Session(engine) as session:
        return session.exec(select(ExportRun)).all()


def test_cli_export_writes_and_reports(db, engine, tmp_path):
    out = tmp_path / "dpo.jsonl"
    result = run("export", "dpo", "--db", db, "--output", out, "--min-votes", "2")
    assert result.exit_code == 0, result.output
    assert "Wrote 2 dpo rows" in result.output
    assert "chosen_flagged 1" in result.output
    manifest = json.loads((tmp_path / "dpo.jsonl.manifest.json").read_text())
    command = manifest["command"]
    assert command[:3] == ["therapref", "export", "dpo"]
    assert len(command) == 9
    pairs = dict(zip(command[3::2], command[4::2], strict=True))
    assert pairs == {"--output": str(out), "--db": db, "--min-votes": "2"}
    assert manifest["filters"]["min_votes"] == 2
    result = run("export", "sft", "--db", db, "-o", tmp_path / "sft.jsonl", "--scrub-pii")
    assert result.exit_code == 0, result.output
    assert "PII replaced: email 1, phone 0, url 0, name 0." in result.output


def test_existing_file_without_force(db, engine, tmp_path):
    out = tmp_path / "dpo.jsonl"
    out.write_text("keep me\n")
    line = error_line(run("export", "dpo", "--db", db, "--output", out))
    assert "already exists (use --force to overwrite)" in line
    assert out.read_text() == "keep me\n"
    assert export_runs(engine) == []
    assert leftovers(tmp_path, "dpo") == ["dpo.jsonl"]
    assert run("export", "dpo", "--db", db, "--output", out, "--force").exit_code == 0
    assert out.read_text().startswith('{"prompt"')


def test_unwritable_path(db, engine, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    line = error_line(run("export", "kto", "--db", db, "--output", blocker / "out.jsonl"))
    assert "cannot write" in line
    assert "is not a folder" in line
    line = error_line(run("export", "kto", "--db", db, "--output", tmp_path / "missing" / "out.jsonl"))
    assert "does not exist" in line
    assert not (tmp_path / "missing").exists()
    assert export_runs(engine) == []


def test_empty_result(db, engine, tmp_path):
    out = tmp_path / "empty.jsonl"
    line = error_line(run("export", "dpo", "--db", db, "--output", out, "--min-votes", "4"))
    assert "nothing to export: 0 of 6 comparisons" in line
    assert "below_min_votes" in line
    assert leftovers(tmp_path, "empty") == []
    assert export_runs(engine) == []
    line = error_line(run("export", "hf", "--db", db, "--output", tmp_path / "emptyds", "--min-votes", "4"))
    assert "nothing to export" in line
    assert leftovers(tmp_path, "emptyds") == []


@pytest.mark.parametrize(("args", "message"), [
    (["--candidate", "gpt-9"], "unknown candidate model 'gpt-9' (known: risky, terse, warm)"),
    (["--guideline-version", "7"], "unknown guideline version 7 (known: 1, 2)"),
    (["--since", "yesterday"], "--since 'yesterday' is not an ISO date"),
    (["--min-agreement", "1.5"], "--min-agreement must lie between 0 and 1"),
    (["--select", "reference", "--reference-candidate", "gold"], "unknown candidate model 'gold'"),
])
def test_unknown_filter_values(db, engine, tmp_path, args, message):
    out = tmp_path / "x.jsonl"
    line = error_line(run("export", "sft", "--db", db, "--output", out, *args))
    assert message in line
    assert leftovers(tmp_path, "x.jsonl") == []
    assert export_runs(engine) == []
