"""The loop benchmark (bench/loop.py): its simulated clinician's rubric (doctests, run here since bench/ is
outside the doctest paths) and the whole pipeline in smoke mode on a tiny random Llama: demo project and
imported prompts, bench candidates' replies judged through the queue, one DPO round through
``policy.loop.run_round``, the A/B pairs judged the same way and the head-to-head figures."""

from __future__ import annotations

import doctest
import json
import math
import os
import sqlite3
import subprocess
import sys

import pytest

from tests.reliability_helpers import PYTHON, ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.loop as bench_loop  # noqa: E402


def test_the_rubric_is_documented_by_its_doctests():
    result = doctest.testmod(bench_loop, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def test_the_rubric_prefers_a_reflective_reply_with_one_open_question():
    import random

    conversation = [{"role": "user", "content": "My dog died last week."}]
    good = "It sounds like you feel heartbroken. What do you miss most about her?"
    long_advice = " ".join(["You should try to stay busy and keep a routine every day."] * 10)
    pills = "Take 20 mg of sertraline and a sleeping pill tonight."
    assert bench_loop.rubric_score(conversation, good) == 3.0
    assert bench_loop.rubric(conversation, long_advice)["length"] == 0.0
    assert bench_loop.rubric_flags(pills) == ["harmful_advice"]
    rng = random.Random(1)
    verdicts = [bench_loop.simulated_judgment(conversation, good, pills, rng)[0] for _ in range(20)]
    assert verdicts == ["a"] * 20
    two_questions = "It sounds like you feel heartbroken. What do you miss? How do you sleep?"
    assert bench_loop.rubric(conversation, two_questions)["question"] == 0.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_closes_the_loop(tmp_path, shared_data):
    work, out = tmp_path / "work", tmp_path / "loop.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([PYTHON, str(ROOT / "bench" / "loop.py"), "--smoke", "--workdir", str(work),
                          "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| method | K | rows | win rate [95% CI]" in run.stdout
    assert "| K judgments | training pairs | held-out pairs | accuracy |" in run.stdout
    figures = json.loads(out.read_text())
    row, best_of = figures["rows"]
    assert (row["method"], row["k"]) == ("dpo", 6)
    assert best_of["method"] == "best-of-2" and best_of["n"] == 4
    (reward,) = figures["reward"]
    assert reward["k"] == 6 and 0.0 <= reward["accuracy"] <= 1.0
    assert row["n"] == 4 and row["wins"] + row["losses"] + row["ties"] == 4  # every A/B pair judged once
    assert 0.0 <= row["win_low"] <= row["win_rate"] <= row["win_high"] <= 1.0
    assert 1 <= row["n_train"] <= 6  # at most the first K judgments (ties give no DPO pair)
    assert math.isfinite(row["words_new"]) and math.isfinite(row["rubric_base"])
    heldout, train = set(figures["prepare"]["heldout"]), set(figures["prepare"]["train_prompts"])
    evaluation = set(figures["prepare"]["eval_prompts"])
    assert len(heldout) == 4 and not heldout & train and not evaluation & (train | heldout)
    manifest = json.loads((work / "rounds" / "dpo-k6" / "export.jsonl.manifest.json").read_text())
    assert set(manifest["prompt_ids"]) <= train
    with sqlite3.connect(work / "bench.db") as db:
        judged_by = db.execute("select distinct a.username, a.role from judgment j join annotator a "
                               "on a.id = j.annotator_id").fetchall()
        assert judged_by == [("sim-clinician", "clinician")]  # through the queue, as a clinician account
        ab_prompts = db.execute("select c.prompt_id from judgment j join comparison c on c.id = j.comparison_id"
                                ).fetchall()
        assert sum(1 for (prompt_id,) in ab_prompts if prompt_id in heldout) == 8  # dpo and best-of-2
        # The clinician judged samples of one model (two names for the same configuration).
        sampled = db.execute("select distinct c.name from judgment j join comparison k on k.id = j.comparison_id "
                             "join response r on r.id = k.response_a_id join candidatemodel c "
                             f"on c.id = r.candidate_model_id where k.prompt_id not in ({','.join(map(str, heldout))})"
                             ).fetchall()
        assert {name for (name,) in sampled} <= {"bench-sample-a", "bench-sample-b"}
