"""``therapref loop round`` end to end on the embedded SmolLM2 with a handful of judged pairs: export →
fine-tune (two steps) → register (GGUF) → A/B test on prompts it never trained on; a crash in the A/B
step and the resume; a second call that does nothing; a clinician judging the A/B pairs in the app
(streamlit.testing) and the head-to-head in ``therapref report``. Bad input: one line, nothing written."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select
from sqlmodel import Session
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from db.engine import make_engine
from db.migrate import upgrade
from db.models import AbTest, Comparison, ExportRun, Judgment, PolicyRun, Response
from labeling_app.state import USER_KEY, User
from policy.abtest import AbTestError
from tests.app_helpers import APP
from tests.factories import add_prompts, build_project
from therapref.cli import app

pytestmark = pytest.mark.slow

HELDOUT = ["My sister stopped talking to me after the wedding.", "I dread Sunday evenings."]
# Two optimizer steps on tiny batches: enough to train, register and generate; cheap on two cores.
TRAINING = """[finetune]
max_steps = 2
per_device_train_batch_size = 2
max_length = 96
learning_rate = 1e-5
save_strategy = "no"
logging_steps = 1
num_threads = 1
"""
TABLES = (AbTest, Comparison, ExportRun, Judgment, PolicyRun, Response)
runner = CliRunner()


def _steps(output: str) -> list[str]:
    """The command's step lines and its last line (training and conversion write progress of their own)."""
    return re.findall(r"\[\d/4\] [a-z]+:[^\r\n]*", output) + output.strip().splitlines()[-1:]


def _counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return {t.__name__: session.execute(select(func.count()).select_from(t)).scalar_one() for t in TABLES}


def _project(url: str):
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=4, n_clinicians=1, with_judgments=True)
        heldout = add_prompts(session, 2, texts=HELDOUT, system=None, source="heldout")
    return engine, project, [p.id for p in heldout]


def _round(url: str, output, *extra: str):
    return runner.invoke(app, ["loop", "round", "--output", str(output), "--method", "sft", "--prompts", "2",
                               "--max-tokens", "8", "--no-progress", "--db", url, *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One round run three times: the A/B step fails once, the second call resumes, the third does nothing."""
    folder = tmp_path_factory.mktemp("loop")
    url = f"sqlite:///{folder / 'loop.db'}"
    engine, project, heldout = _project(url)
    config = folder / "train.toml"
    config.write_text(TRAINING)
    output = folder / "round1"

    def down(*args, **kwargs):
        raise AbTestError("simulated: the generation endpoint is down")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("policy.abtest.create_abtest", down)
        first = _round(url, output, "--config", str(config))
    record_after_crash = json.loads((output / "round.json").read_text())
    second = _round(url, output, "--config", str(config))
    counts_before = _counts(engine)
    third = _round(url, output, "--config", str(config))
    yield {"engine": engine, "url": url, "project": project, "heldout": heldout, "output": output, "first": first,
           "crash": record_after_crash, "second": second, "third": third, "counts_before": counts_before,
           "config": config}
    engine.dispose()


def test_a_crash_in_the_ab_step_keeps_the_finished_steps(finished):
    first, crash = finished["first"], finished["crash"]
    assert first.exit_code == 1
    lines = _steps(first.output)
    assert [line.split(":")[0] for line in lines[:3]] == ["[1/4] export", "[2/4] finetune", "[3/4] register"]
    assert "simulated: the generation endpoint is down" in lines[-1]
    assert {s: crash["steps"][s]["status"] for s in crash["steps"]} == {
        "export": "done", "finetune": "done", "register": "done", "abtest": "failed"}
    assert crash["steps"]["abtest"]["error"] == "simulated: the generation endpoint is down"
    assert crash["config"]["method"] == "sft"


def test_the_second_call_resumes_at_the_failed_step(finished):
    second, output = finished["second"], finished["output"]
    assert second.exit_code == 0, second.output
    lines = _steps(second.output)
    assert len(lines) == 5
    assert lines[0].startswith("[1/4] export: done earlier (4 sft rows)")
    assert lines[1].startswith("[2/4] finetune: done earlier")
    assert lines[2].startswith("[3/4] register: done earlier")
    assert lines[3].startswith("[4/4] abtest: A/B test")
    assert lines[-1].startswith(f"Round {output} finished: 4 sft rows")
    record = json.loads((output / "round.json").read_text())
    assert {s["status"] for s in record["steps"].values()} == {"done"}
    # Each step's artifacts are in the folder.
    assert (output / "export.jsonl").is_file() and (output / "export.jsonl.manifest.json").is_file()
    assert (output / "policy" / "therapref_policy.json").is_file() and (output / "policy" / "model.gguf").is_file()
    assert json.loads((output / "abtest.json").read_text())["abtest_id"] == record["steps"]["abtest"]["figures"][
        "abtest_id"]
    with Session(finished["engine"]) as session:
        assert session.execute(select(func.count(PolicyRun.id))).scalar_one() == 1  # trained once


def test_the_ab_test_uses_only_prompts_the_policy_never_saw(finished):
    output, heldout = finished["output"], finished["heldout"]
    trained_on = set(json.loads((output / "export.jsonl.manifest.json").read_text())["prompt_ids"])
    assert trained_on == {p.id for p in finished["project"].prompts}
    with Session(finished["engine"]) as session:
        test = session.execute(select(AbTest)).scalars().one()
        comparisons = session.execute(select(Comparison).where(
            Comparison.id.in_(test.details["comparison_ids"]))).scalars().all()
        assert sorted(c.prompt_id for c in comparisons) == sorted(heldout)
        assert not trained_on & {c.prompt_id for c in comparisons}
        assert min(c.priority for c in comparisons) > 0  # at the front of the queue
        run = session.execute(select(PolicyRun)).scalars().one()
        assert test.policy_run_id == run.id and run.method == "sft"


def test_a_finished_round_is_a_no_op(finished):
    third, output = finished["third"], finished["output"]
    assert third.exit_code == 0, third.output
    lines = _steps(third.output)
    assert len(lines) == 5
    assert all("done earlier" in line for line in lines[:4])
    assert lines[4].startswith(f"Round {output} finished")
    assert "no judgments by clinicians yet" in lines[4]
    assert _counts(finished["engine"]) == finished["counts_before"]


def test_other_settings_in_the_same_folder_are_refused(finished):
    before = _counts(finished["engine"])
    result = _round(finished["url"], finished["output"], "--config", str(finished["config"]), "--epochs", "3")
    assert result.exit_code == 1
    assert "holds a round with other settings (epochs: None in the folder, 3.0 now)" in result.output
    assert _counts(finished["engine"]) == before


def test_a_clinician_judges_the_ab_pairs_in_the_app_and_the_report_shows_the_head_to_head(finished, tmp_path,
                                                                                        monkeypatch):
    engine, url = finished["engine"], finished["url"]
    monkeypatch.setenv("THERAPREF_DATABASE_URL", url)
    clinician = finished["project"].clinicians[0]
    with Session(engine) as session:
        ab_ids = set(session.execute(select(AbTest)).scalars().one().details["comparison_ids"])
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state[USER_KEY] = User(clinician.id, clinician.username, clinician.display_name, clinician.role)
    at.run()
    for _ in range(len(ab_ids)):
        keys = [b.key for b in at.button if b.key and b.key.startswith("choice-left-")]
        assert keys, [t.value for t in at.title]
        screen = keys[0].removeprefix("choice-left-")
        at.radio(key=f"strength-{screen}").set_value(2)
        at.button(key=f"choice-left-{screen}").click().run()
        assert not at.exception
    with Session(engine) as session:
        judged = set(session.execute(select(Judgment.comparison_id).where(
            Judgment.comparison_id.in_(ab_ids))).scalars().all())
    assert judged == ab_ids  # the A/B pairs came first (priority) and were judged in the app

    report = runner.invoke(app, ["report", "--output", str(tmp_path / "report"), "--bootstrap", "50", "--db", url])
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Head-to-head (A/B tests)" in markdown
    section = markdown[markdown.index("Head-to-head (A/B tests)"):]
    assert "policy-round1" in section and "smollm2-base" in section

    again = _round(url, finished["output"], "--config", str(finished["config"]))
    assert again.exit_code == 0
    assert "clinicians so far: win rate" in again.output.splitlines()[-1]
    assert f"{len(ab_ids)} judgments" in again.output.splitlines()[-1]


# --- bad input: one line, nothing written -------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    url = f"sqlite:///{tmp_path / 'small.db'}"
    engine, project, heldout = _project(url)
    yield engine, url
    engine.dispose()


@pytest.mark.parametrize("extra, message", [
    (["--against", "nobody"], "Error: --against 'nobody': unknown candidate (known: terse, warm)"),
    (["--min-votes", "5"], "Error: nothing to export: 0 of "),
    (["--base-model", "/no/such/folder"], "Error: --base-model /no/such/folder: no such folder"),
    (["--prompts", "0"], "Error: --prompts must be at least 1, not 0"),
    # the export filters are `therapref export`'s own (declared once): judges by name, criteria
    (["--sources", "judge:nobody"], "Error: --sources: no judge named 'judge:nobody' (known: none)"),
    (["--not-worse-on", "kindness"], "Error: --not-worse-on: unknown criterion 'kindness'"),
    (["--sources", "judge"], "Error: --sources 'judge': not clinicians, imported, both, judges, all"),
])
def test_bad_input_is_one_line_and_leaves_nothing(small, tmp_path, extra, message):
    engine, url = small
    before = _counts(engine)
    output = tmp_path / "round"
    result = _round(url, output, *extra)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(message), result.output
    assert not output.exists()  # no folder, no round.json
    assert _counts(engine) == before


def test_a_folder_that_is_not_a_round_is_refused(small, tmp_path):
    engine, url = small
    output = tmp_path / "occupied"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    result = _round(url, output)
    assert result.exit_code == 1
    assert "folder is not empty and holds no round.json" in result.output
    assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]
