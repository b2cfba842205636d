"""``therapref export spans`` on a real SQLite file and a real PostgreSQL server: spans marked in the
app's submit paths come out with offsets into the written text, flag kinds and annotator ids;
``--scrub-pii`` carries the offsets over; filters; bad input is one line and writes nothing."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from db.assignment import next_comparison, submit_judgment
from db.crud import add_comparison, add_response, get_or_create_candidate, get_or_create_prompt
from db.engine import make_engine
from db.migrate import upgrade
from db.models import ExportRun
from db.rankings import add_ranking_task, next_ranking, submit_ranking
from tests.factories import build_project, user
from therapref.cli import app

pytestmark = pytest.mark.postgres

runner = CliRunner()
HOSTILE = "Write to me at dana@example.org, you are pathetic. <script>alert(1)</script>"
RANKED = "Just get over it. Call 555-123-4567 if you must."


def _at(text: str, word: str) -> tuple[int, int]:
    start = text.index(word)
    return start, start + len(word)


def _build(url: str):
    """Two clinicians: clin0 marks spans on a pair (both replies), clin1 on a ranking."""
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=1, n_clinicians=2)
        rude, _ = get_or_create_candidate("rude", session=session, provider="local")
        prompt, _ = get_or_create_prompt(user("I feel like nobody listens to me."), session=session, source="test")
        hostile, _ = add_response(prompt, rude, HOSTILE, session=session)
        other, _ = add_response(prompt, project.candidates[1], "I hear you. Tell me more.", session=session)
        comparison, _ = add_comparison(hostile, other, session=session)
        comparison.priority = 10  # served first
        session.add(comparison)
        ranked, _ = add_response(project.prompts[0], rude, RANKED, session=session)
        replies = [project.responses[(project.prompts[0].id, "warm")],
                   project.responses[(project.prompts[0].id, "terse")], ranked]
        add_ranking_task(replies, session=session)
        session.commit()
        clin0, clin1 = project.clinicians
        assignment = next_comparison(clin0.id, session=session)
        assert assignment.comparison_id == comparison.id
        side = "left" if assignment.left_response_id == hostile.id else "right"
        other_side = "right" if side == "left" else "left"
        submit_judgment(assignment.token, session=session, annotator_id=clin0.id, preferred=other_side, strength=3,
                        spans={side: [_at(HOSTILE, "you are pathetic") + ("toxic",),
                                      _at(HOSTILE, "dana@example") + ("boundary",),
                                      _at(HOSTILE, "<script>") + ("toxic",)],
                               other_side: [(0, 6, "dismissive")]})
        task = next_ranking(clin1.id, session=session)
        number = task.response_ids.index(ranked.id) + 1
        submit_ranking(task.token, [[1], [2], [3]], session=session, annotator_id=clin1.id,
                       spans={number: [_at(RANKED, "get over it") + ("dismissive",),
                                       _at(RANKED, "if you must") + ("dismissive",)]})
        session.commit()
        ids = {"clin0": clin0.id, "clin1": clin1.id, "hostile": hostile.id, "other": other.id, "ranked": ranked.id}
    return engine, ids


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _quotes(row) -> list[tuple[str, str]]:
    return [(row["text"][s["start"]:s["end"]], s["flag"]) for s in row["spans"]]


def test_export_spans_writes_text_offsets_kinds_and_annotators(any_db_url, tmp_path):
    engine, ids = _build(any_db_url)
    out = tmp_path / "spans.jsonl"
    result = _run("export", "spans", "--db", any_db_url, "--output", out)
    assert result.exit_code == 0, result.output
    assert "Wrote 3 spans rows" in result.output and "Spans: 6 (boundary 1, dismissive 3, toxic 2)." in result.output
    rows = {row["response_id"]: row for row in _lines(out)}
    assert sorted(rows) == sorted([ids["hostile"], ids["other"], ids["ranked"]])
    hostile = rows[ids["hostile"]]
    assert hostile["text"] == HOSTILE  # stored text, untouched (the markup is data, not HTML)
    assert _quotes(hostile) == [("dana@example", "boundary"), ("you are pathetic", "toxic"), ("<script>", "toxic")]
    assert hostile["annotator_ids"] == [ids["clin0"]] and hostile["flags"] == ["boundary", "toxic"]
    assert hostile["prompt"][-1] == {"role": "user", "content": "I feel like nobody listens to me."}
    assert all(s["judgment_id"] and s["ranking_id"] is None for s in hostile["spans"])
    ranked = rows[ids["ranked"]]
    assert _quotes(ranked) == [("get over it", "dismissive"), ("if you must", "dismissive")]
    assert ranked["annotator_ids"] == [ids["clin1"]] and all(s["ranking_id"] for s in ranked["spans"])
    manifest = json.loads((tmp_path / "spans.jsonl.manifest.json").read_text())
    assert manifest["kind"] == "spans" and manifest["rows"] == 3 and manifest["counts"]["spans"] == 6
    with Session(engine) as session:
        assert [r.kind for r in session.exec(select(ExportRun)).all()] == ["spans"]
    # Filters: only the rude candidate's replies; a judge-free source has none.
    out2 = tmp_path / "rude.jsonl"
    assert _run("export", "spans", "--db", any_db_url, "-o", out2, "--candidate", "rude").exit_code == 0
    assert sorted(r["response_id"] for r in _lines(out2)) == sorted([ids["hostile"], ids["ranked"]])


def test_scrub_pii_carries_the_offsets_over(any_db_url, tmp_path):
    _engine, ids = _build(any_db_url)
    out = tmp_path / "scrubbed.jsonl"
    result = _run("export", "spans", "--db", any_db_url, "-o", out, "--scrub-pii")
    assert result.exit_code == 0, result.output
    rows = {row["response_id"]: row for row in _lines(out)}
    hostile = rows[ids["hostile"]]
    assert hostile["text"] == "Write to me at [EMAIL], you are pathetic. <script>alert(1)</script>"
    # The span inside the e-mail now covers the placeholder; the others cover the same words as before.
    assert _quotes(hostile) == [("[EMAIL]", "boundary"), ("you are pathetic", "toxic"), ("<script>", "toxic")]
    ranked = rows[ids["ranked"]]
    assert ranked["text"] == "Just get over it. Call [PHONE] if you must."
    assert _quotes(ranked) == [("get over it", "dismissive"), ("if you must", "dismissive")]
    manifest = json.loads((tmp_path / "scrubbed.jsonl.manifest.json").read_text())
    assert manifest["counts"]["spans_changed_by_scrubbing"] == 1
    assert manifest["counts"]["pii_replaced"]["email"] == 1 and manifest["counts"]["pii_replaced"]["phone"] == 1


@pytest.mark.parametrize("args, message", [
    (["--sources", "imported"], "nothing to export: 0 of 3 replies with unsafe spans passed the filters"),
    (["--min-votes", "2"], "--min-votes applies to preference exports, not to spans"),
    (["--exclude-flagged"], "--exclude-flagged applies to preference exports, not to spans"),
    (["--candidate", "nobody"], "unknown candidate model 'nobody'"),
    (["--select", "bt"], "--select bt applies to sft exports only"),
])
def test_bad_input_is_one_line_and_writes_nothing(sqlite_url, tmp_path, args, message):
    engine, _ids = _build(sqlite_url)
    out = tmp_path / "spans.jsonl"
    result = _run("export", "spans", "--db", sqlite_url, "-o", out, *args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    assert not any("spans" in p.name for p in tmp_path.iterdir())
    with Session(engine) as session:
        assert session.exec(select(ExportRun)).all() == []
