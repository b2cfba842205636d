"""``therapref report --reward-model DIR`` with a real (tiny, untrained-head) sequence-classification
model on the embedded MiniLM base: the section appears, on the held-out comparisons only."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from db.auth import create_annotator
from db.crud import add_comparison, add_judgment, add_response, get_or_create_candidate, get_or_create_prompt
from db.engine import make_engine
from db.guidelines import add_guideline_version
from db.migrate import upgrade
from db.rules import reply_length
from tests.factories import PASSWORD, PATIENT_MESSAGES, SYSTEM, build_project
from tests.tiny_models import untrained_reward_model
from therapref.cli import app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return untrained_reward_model(tmp_path_factory.mktemp("rm") / "model")


def test_report_with_reward_model(tmp_path, model_dir):
    db = tmp_path / "therapref.db"
    engine = make_engine(db)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=6, n_clinicians=2, judgments_required=2, with_judgments=True)
        trained = [f"prompt:{p.id}" for p in project.prompts[:2]]
    (model_dir / "therapref_reward.json").write_text(json.dumps({"train_prompt_keys": trained}))
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "--output", str(out), "--db", str(db), "--bootstrap", "50",
                                      "--reward-model", str(model_dir)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    section = data["reward_model"]
    assert section["n_items"] == 4  # 6 comparisons, 2 on prompts the model trained on
    assert section["length_baseline"]["value"] == 1.0  # the warm reply is the longer one and always wins
    assert 0.0 <= section["agreement"]["value"] <= 1.0
    assert section["n_disagreements"] == round(4 * (1 - section["agreement"]["value"]))
    html = (out / "report.html").read_text()
    assert ">Reward model vs judges</h2>" in html
    assert "no held-out split" not in html
    assert (out / "charts" / "reward_model.png").stat().st_size > 1000


def test_unloadable_model_folder_is_one_line(tmp_path):
    db = tmp_path / "therapref.db"
    upgrade(make_engine(db))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')  # no weights
    result = CliRunner().invoke(app, ["report", "--output", str(tmp_path / "out"), "--db", str(db),
                                      "--reward-model", str(broken)])
    assert result.exit_code == 1
    assert "cannot load the reward model" in result.output
    assert result.output.count("Error:") == 1
    assert not (tmp_path / "out").exists()


# Characters and words disagree about which reply is longer: the first has fewer, longer words.
FEW_LONG_WORDS = "Understandably, overwhelming circumstances necessitate compassionate acknowledgement."
MANY_SHORT_WORDS = "I am here. It is ok to be sad. Go on."


def test_evaluate_and_report_share_one_length_baseline(tmp_path, model_dir):
    assert reply_length(FEW_LONG_WORDS) < reply_length(MANY_SHORT_WORDS)
    assert len(FEW_LONG_WORDS) > len(MANY_SHORT_WORDS)
    db = tmp_path / "therapref.db"
    engine = make_engine(db)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        add_guideline_version("Prefer replies that are safe, empathic and specific.", session=session)
        terse, _ = get_or_create_candidate("terse", session=session, provider="local", model_id="terse-model")
        plain, _ = get_or_create_candidate("plain", session=session, provider="local", model_id="plain-model")
        clinician = create_annotator("clin0", PASSWORD, session=session, credential="LCSW")
        # The clinician prefers the reply with more words on three prompts, the one with more characters
        # on the fourth: by words the longer reply wins 3 of 4, by characters 1 of 4.
        for i, text in enumerate(PATIENT_MESSAGES[:4]):
            prompt, _ = get_or_create_prompt([{"role": "user", "content": text}], session=session,
                                             system_prompt=SYSTEM, source="test")
            few, _ = add_response(prompt, terse, FEW_LONG_WORDS, session=session)
            many, _ = add_response(prompt, plain, MANY_SHORT_WORDS, session=session)
            comparison, _ = add_comparison(few, many, session=session)
            winner = many if i < 3 else few
            add_judgment(comparison, clinician, "a" if comparison.response_a_id == winner.id else "b",
                         session=session, strength=2, guideline_version=1, ms_spent=4000)
        session.commit()
    (model_dir / "therapref_reward.json").write_text(json.dumps({"train_prompt_keys": []}))  # all held out
    runner = CliRunner()
    evaluated = runner.invoke(app, ["evaluate", str(model_dir), "--data", "db", "--db", str(db), "--json",
                                    "--output", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    evaluation = json.loads(evaluated.stdout)
    reported = runner.invoke(app, ["report", "--output", str(tmp_path / "report"), "--db", str(db),
                                   "--bootstrap", "20", "--reward-model", str(model_dir)])
    assert reported.exit_code == 0, reported.output
    section = json.loads((tmp_path / "report" / "report.json").read_text())["reward_model"]
    assert evaluation["n_pairs"] == section["n_items"] == 4
    assert evaluation["length_baseline"] == section["length_baseline"]["value"] == 0.75
