"""The judge gate on the simulated pool (bench/gate.py --data simulated, bench/gate_simulated.py): the
per-seed check on hand-made comparisons whose answer is known (a judge that is right and sure where the
rubric decides gets coverage and holds the clinicians' agreement; a confident coin gets none), and the
command end to end on a cached pool with a tiny reward base (seed 0 through a real database and
``apply_gate``)."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability_helpers import PYTHON, ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gate_simulated import GateComparison, comparisons_of, gate_seed, seed_pool  # noqa: E402
from bench.simulated_pool import PoolSettings  # noqa: E402

GOOD = "It sounds like you feel alone right now. What would help you most tonight?"
FAIR = "That is hard. Many people feel that way sometimes."
BAD = "Just take a pill and stop being lazy."
SAME = "That is hard. Many people feel like that sometimes."  # scores as FAIR: clinicians mostly tie
MESSAGES = (("user", "I feel alone since my divorce."),)


def args(**overrides) -> argparse.Namespace:
    values = {"clinicians": 3, "calibration_share": 0.5, "min_calibration": 20}
    return argparse.Namespace(**{**values, **overrides})


def pool_of(judge: str, n: int = 300) -> list[GateComparison]:
    """``n`` comparisons, a third each: GOOD vs FAIR (decided), FAIR vs SAME (a tie), GOOD vs BAD (flagged).
    ``judge``: "right" says the better reply with confidence 0.9 and is unsure (0.1) on the tie;
    "coin" says a or b at random with confidence 0.9 everywhere."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        a, b = [(GOOD, FAIR), (FAIR, SAME), (GOOD, BAD)][i % 3]
        if i % 2:
            a, b = b, a
        if judge == "right":
            preferred = "tie" if {a, b} == {FAIR, SAME} else ("a" if a == GOOD else "b")
            confidence = 0.1 if preferred == "tie" else 0.9
            preferred = "a" if preferred == "tie" else preferred
        else:
            preferred, confidence = rng.choice("ab"), 0.9
        out.append(GateComparison(f"q{i}", MESSAGES, a, b, preferred, confidence))
    return out


def test_a_judge_right_where_the_rubric_decides_covers_the_decided_comparisons():
    result = gate_seed(seed_pool(pool_of("right"), 0, args()), 0.1, args())
    assert result["threshold"] == 0.9, result["reason"]
    # the decided third of the open comparisons (the flagged third never goes to the judge, the tie third
    # is below the threshold): coverage one third
    assert result["coverage"] == pytest.approx(1 / 3, abs=0.02)
    assert result["flagged_share"] == pytest.approx(1 / 3, abs=0.01)
    assert result["judge_agreement"] >= result["target"] - 0.05
    assert result["judge_agreement"] > 0.9


def test_a_confident_coin_gets_no_coverage():
    result = gate_seed(seed_pool(pool_of("coin"), 0, args()), 0.1, args())
    assert result["threshold"] is None and result["coverage"] == 0.0
    assert "no confidence threshold reaches" in result["reason"]


def test_comparisons_pair_distinct_replies_once():
    groups = [{"prompt_key": "q", "messages": [list(MESSAGES[0])], "replies": [GOOD, FAIR, GOOD, BAD]}]
    assert [(c.reply_a, c.reply_b) for c in comparisons_of(groups)] == [(GOOD, FAIR), (GOOD, BAD), (FAIR, BAD)]


def run_gate(tmp_path, *flags: str, questions: int = 12, replies: tuple[str, ...] = (GOOD, FAIR, SAME, "Okay ({i})."),
             ) -> tuple[subprocess.CompletedProcess, Path]:
    """bench/gate.py --data simulated on a cached pool of hand-written replies (nothing is sampled)."""
    settings = PoolSettings(questions=questions, replies=4, max_tokens=8, model="hand-written")
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    groups = [{"prompt_key": f"q{i}", "messages": [["user", f"I feel alone ({i})."]],
               "replies": [r.format(i=i) for r in replies]} for i in range(questions)]
    (cache / f"{settings.key()}.json").write_text(json.dumps({"settings": {}, "groups": groups}))
    out = tmp_path / "gate.json"
    command = [str(PYTHON), str(ROOT / "bench" / "gate.py"), "--data", "simulated", "--questions", str(questions),
               "--replies", "4", "--max-tokens", "8", "--sampler", "hand-written", "--cache-dir", str(cache),
               "--alphas", "0.1", "--json", str(out), *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280), out


def test_reference_judge_with_ties_gets_coverage_without_ties_none(tmp_path):
    """The rubric read as one more clinician: saying tie is what lets it stand in where clinicians tie."""
    tied = (GOOD, FAIR, SAME, "That is hard. Lots of people feel that way sometimes ({i}).")  # 3 of 6 pairs tie
    flags = ("--judge", "rubric", "--seeds", "5", "--calibration-share", "0.5")
    proc, out = run_gate(tmp_path, *flags, "--ties", questions=80, replies=tied)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "tie-aware judge: scale" in proc.stdout and "reference judge" in proc.stdout
    (with_ties,) = json.loads(out.read_text())
    runs = with_ties["runs"]
    assert sum(r["threshold"] is not None for r in runs) >= 3 and sum(r["coverage"] for r in runs) / 5 > 0.3
    assert all(r["judge_agreement"] >= r["target"] - 0.05 for r in runs if r["threshold"] is not None)
    proc, out = run_gate(tmp_path, *flags, questions=80, replies=tied)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (no_ties,) = json.loads(out.read_text())
    assert sum(r["coverage"] for r in no_ties["runs"]) < sum(r["coverage"] for r in with_ties["runs"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_simulated_gate_command_end_to_end(tmp_path):
    """The judge a tiny BERT trained two steps; its scores cached, so a rerun trains nothing."""
    from tests.tiny_models import tiny_reward_base

    base = tiny_reward_base(tmp_path / "tiny-bert")
    flags = ("--base-model", str(base), "--judge-steps", "2", "--max-length", "32", "--threads", "1", "--seeds", "2",
             "--min-calibration", "5", "--scores-cache", str(tmp_path / "scores.json"))
    proc, out = run_gate(tmp_path, *flags)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "6 questions" in proc.stdout and "36 comparisons of 6 other questions gated" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("gate on the simulated pool: coverage ")
    (row,) = json.loads(out.read_text())
    assert row["seed0"].startswith("Gate judge:reward-judge: ")  # apply_gate's line, from a real database
    assert len(row["runs"]) == 2 and all(0.0 <= r["coverage"] <= 1.0 for r in row["runs"])
    # the database and the pure steps see the same clinicians: the same target
    assert 0.0 < row["runs"][0]["target"] <= 1.0 and f"{row['runs'][0]['target']:.2f}" in row["seed0"]
    assert set(row["labels"]) <= {"a", "b", "tie"}
    again, out = run_gate(tmp_path, *flags)  # the same settings: the cached scores, no training
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Filtering train" not in again.stderr and json.loads(out.read_text())[0]["runs"] == row["runs"]
