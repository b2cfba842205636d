"""``therapref report``: files, charts and escaping, from a small database built here and from Counsel
Chat upvote preferences; the CLI's errors."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image
from sqlmodel import Session
from typer.testing import CliRunner

from analytics.config import AnalyticsConfig
from analytics.report import SECTION_TITLES, generate_report
from analytics.reward_eval import length_scorer
from db.engine import make_engine
from db.importers import import_preferences
from db.migrate import upgrade
from db.models import Comparison
from tests.conftest import COUNSEL_CHAT
from tests.factories import HOSTILE_NAME, HOSTILE_REPLY, build_rich_project
from therapref.cli import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def assert_real_png(data: bytes) -> None:
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(data)).convert("L")
    low, high = image.getextrema()
    assert high - low > 100  # drawn on, not blank
    assert sum(1 for p in image.getdata() if p < 200) > 200


@pytest.fixture(scope="module")
def rich_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("rich") / "therapref.db"
    engine = make_engine(path)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        build_rich_project(session)
    engine.dispose()
    return path


def test_report_from_a_small_database(rich_db, tmp_path):
    engine = make_engine(rich_db)
    with Session(engine) as session:
        summary, files = generate_report(tmp_path / "out", session=session, scorer=length_scorer,
                                         scorer_label="length <i>baseline</i>",
                                         config=AnalyticsConfig(n_bootstrap=100, min_shared_items=5))
    assert summary.n_annotators == 4
    assert summary.agreement.n_comparisons == 18
    assert summary.agreement.preference.kappas
    assert len(summary.leaderboard.overall.ratings) == 3
    assert summary.reward is not None
    assert summary.reward.n_items > 0
    names = sorted(p.name for p in files.charts)
    assert names == sorted(["progress.png", "agreement.png", "annotators.png", "leaderboard.png", "win_matrix.png",
                            "safety_flags.png", "reward_model.png"])
    for chart in files.charts:
        assert_real_png(chart.read_bytes())

    html = files.html.read_text()
    for title in SECTION_TITLES.values():
        assert f">{title}</h2>" in html
    assert html.count('src="data:image/png;base64,') == 7
    assert "http://" not in html.replace("http://example.com", "")
    # Untrusted text is inert: escaped, never markup.
    assert "<script>" not in html
    assert "<img src=x" not in html
    assert "<b>model" not in html
    assert "<i>baseline" not in html
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in html
    assert "odd &lt;b&gt;model&lt;/b&gt;" in html

    markdown = files.markdown.read_text()
    for name in names:
        assert f"](charts/{name})" in markdown
    for title in SECTION_TITLES.values():
        assert f"## {title}" in markdown
    assert "<script" not in markdown
    assert "<img" not in markdown
    assert "[link](http" not in markdown
    assert "&lt;script&gt;" in markdown

    def no_nan(token: str):  # noqa: ANN202 - strict JSON: NaN/Infinity are not JSON
        raise AssertionError(f"report.json contains {token}")

    data = json.loads(files.json.read_text(), parse_constant=no_nan)
    assert data["n_judgments"] == summary.n_judgments
    assert data["reward_model"]["n_items"] == summary.reward.n_items
    assert {row["annotator"] for row in data["annotators"]} == {"clin0", "clin1", "clin2", HOSTILE_NAME}
    assert HOSTILE_REPLY not in html  # the disagreement table shows it escaped, if at all


def counsel_chat_subset(path, rows: int = 500):  # noqa: ANN001, ANN201
    """The first ``rows`` answers of the real Counsel Chat CSV (whole questions), written with csv."""
    with open(COUNSEL_CHAT, newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        header = next(reader)
        kept = [row for _, row in zip(range(rows), reader, strict=False)]
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(kept)
    return path


def test_report_from_counsel_chat_preferences(tmp_path):
    engine = make_engine(tmp_path / "cc.db")
    upgrade(engine)
    with Session(engine) as session:
        summary = import_preferences(counsel_chat_subset(tmp_path / "counsel_chat.csv"), session=session,
                                     format="counselchat-upvotes")
        session.commit()
        assert summary.added["judgments"] > 100
        report, files = generate_report(tmp_path / "report", session=session, scorer=length_scorer,
                                         scorer_label="longer reply", config=AnalyticsConfig(judges="imported",
                                                                                             n_bootstrap=100))
    assert report.n_judgments == summary.added["judgments"]
    assert report.n_annotators == 1
    assert 0.5 < report.reward.length_baseline.value < 0.75
    assert report.leaderboard.overall.ratings == []  # one source of replies: nothing to rank
    html = files.html.read_text()
    for title in SECTION_TITLES.values():
        assert f">{title}</h2>" in html
    assert "needs judgments between at least two candidate models" in html
    assert "No comparison has been judged by two or more annotators" in html
    for chart in files.charts:
        assert_real_png(chart.read_bytes())
    # Clinicians' view of the same database: empty, and says so.
    with Session(engine) as session:
        clinicians, _ = generate_report(tmp_path / "clinicians", session=session,
                                        config=AnalyticsConfig(n_bootstrap=10))
    assert clinicians.n_judgments == 0
    assert "No judgments by clinicians" in clinicians.notes[0]


def test_cli_errors_are_one_line(tmp_path, rich_db):
    db = str(rich_db)
    (tmp_path / "file").write_text("x")
    cases = [
        (["report", "--output", str(tmp_path / "file"), "--db", db], "exists and is not a folder"),
        (["report", "--output", str(tmp_path / "o"), "--db", db, "--judges", "robots"], "--judges 'robots': not"),
        (["report", "--output", str(tmp_path / "o"), "--db", db, "--reward-model", str(tmp_path)], "no config.json"),
        (["report", "--output", str(tmp_path / "o"), "--db", db, "--bootstrap", "-1"], "n_bootstrap"),
        (["gold", "99999", "a", "--db", db], "comparison 99999 does not exist"),
        (["gold", "1", "left", "--db", db], "gold answer must be one of"),
        (["gold", "1", "--db", db], "give an ANSWER"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output
        assert result.output.count("Error:") == 1
    assert not (tmp_path / "o").exists()


def test_cli_gold_sets_and_clears(tmp_path, rich_db):
    db = tmp_path / "copy.db"
    db.write_bytes(rich_db.read_bytes())
    result = runner.invoke(app, ["gold", "2", "b", "--db", str(db)])
    assert result.exit_code == 0, result.output
    engine = make_engine(db)
    with Session(engine) as session:
        assert session.get(Comparison, 2).gold_answer == "b"
    assert runner.invoke(app, ["gold", "2", "--clear", "--db", str(db)]).exit_code == 0
    with Session(engine) as session:
        assert session.get(Comparison, 2).gold_answer is None
