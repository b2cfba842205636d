"""The active-selection benchmark (bench/active.py) in its smoke mode: both pools, a tiny random BERT,
one seed. The frozen learner with the judge gate (three rounds), and the fine-tuned reward model (two
rounds of two training steps each, all three strategies). Checks the printed curves and the JSON: a curve
per strategy that grows by the batch each round, accuracies in [0, 1], the labels-to-reach figures
consistent with the curves, the gate rows, that no held-out prompt is ever in the pool, and (finetune)
that each round's new labels are unlabelled pool pairs and that the strategies choose differently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.reliability_helpers import PYTHON, ROOT
from tests.tiny_models import tiny_reward_base

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.active import POOLS, STRATEGIES, THRESHOLDS, labels_to_reach, main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def run_smoke(tmp_path, pools: tuple[str, ...], *flags: str) -> tuple[str, dict]:
    base = tiny_reward_base(tmp_path / "tiny-bert")
    out = tmp_path / "active.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(PYTHON), str(ROOT / "bench" / "active.py"), "--smoke", *flags,
                           "--base-model", str(base), "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for pool in pools:
        assert f"learning curve, {pool}" in proc.stdout
    assert proc.stdout.count("labels to reach random's final accuracy") == len(pools)
    report = json.loads(out.read_text())
    assert [r["pool"] for r in report["pools"]] == list(pools)
    check_curves(report)
    return proc.stdout, report


def check_curves(report: dict) -> None:
    settings = report["settings"]
    for pool in report["pools"]:
        assert not set(pool["test_prompts"]) & set(pool["pool_prompts"])
        assert pool["n_test"] > 0 and pool["n_pool"] > 0
        assert set(pool["curves"]) == set(STRATEGIES)
        for strategy, runs in pool["curves"].items():
            assert len(runs) == 1  # one seed
            counts = [row["n_labels"] for row in runs[0]]
            assert counts[0] == settings["initial"]
            steps = [b - a for a, b in zip(counts, counts[1:], strict=False)]
            assert steps and all(0 < s <= settings["batch"] for s in steps), (strategy, counts)
            assert all(s == settings["batch"] for s in steps[:-1])
            assert counts[-1] <= pool["n_pool"]
            assert all(0.0 <= row["accuracy"] <= 1.0 for row in runs[0])
        target = pool["curves"]["random"][0][-1]["accuracy"]
        assert pool["target"] == pytest.approx(target)
        for strategy, reach in pool["labels_to_reach"].items():
            curve = [(r["n_labels"], r["accuracy"]) for r in pool["curves"][strategy][0]]
            assert reach["per_seed"] == [labels_to_reach(curve, target)]
        assert pool["labels_to_reach"]["random"]["on_mean_curve"] <= pool["final_n_labels"]


@pytest.mark.timeout(300)
def test_smoke_frozen_learner_prints_curves_and_the_gate(tmp_path, shared_data):
    stdout, report = run_smoke(tmp_path, POOLS, "--learner", "frozen", "--gate")
    assert report["settings"]["learner"] == "frozen"
    assert stdout.count("judge gate (") == 2
    for pool in report["pools"]:
        gate = pool["gate"]
        assert [r["threshold"] for r in gate["rows"]] == list(THRESHOLDS)
        shares = [r["judge_share"] for r in gate["rows"]]
        assert all(0.0 <= s <= 1.0 for s in shares)
        assert shares == sorted(shares, reverse=True)  # a stricter threshold leaves more to clinicians
        assert 0.0 <= gate["judge_accuracy"] <= 1.0


@pytest.mark.timeout(300)
def test_smoke_finetune_learner_trains_the_reward_model_each_round(tmp_path, shared_data):
    stdout, report = run_smoke(tmp_path, ("llmeval2",))  # finetune is the default learner; one pool
    settings = report["settings"]
    assert settings["learner"] == "finetune" and settings["steps"] == 2
    assert "fine-tuned from the base weights each round" in stdout
    for pool in report["pools"]:
        assert 0.0 <= pool["length_baseline"] <= 1.0
        picks = {}
        for strategy, runs in pool["curves"].items():
            labelled: set[int] = set()
            for before, after in zip(runs[0], runs[0][1:], strict=False):
                added = before["added"]
                assert len(added) == after["n_labels"] - before["n_labels"]
                assert not labelled & set(added) and all(0 <= i < pool["n_pool"] for i in added)
                labelled |= set(added)
                assert after["seconds"] > 0  # the round trained and scored a model
            picks[strategy] = [row["added"] for row in runs[0]]
        assert pool["curves"]["random"][0][0]["seconds"] > 0  # the shared first round: trained once, by random
        # The same first labels, then each strategy its own choice (ranked by the model, or drawn).
        assert picks["uncertainty"] != picks["random"] or picks["disagreement"] != picks["random"]

    # --combine merges shares of a run (here the same run twice, as seeds 0 and 1): two runs per strategy.
    share = tmp_path / "share1.json"
    share.write_text(json.dumps({**report, "seeds_run": [1]}))
    merged = tmp_path / "merged.json"
    assert main(["--combine", str(tmp_path / "active.json"), str(share), "--json", str(merged)]) == 0
    combined = json.loads(merged.read_text())
    assert combined["seeds_run"] == [0, 1]
    for pool, original in zip(combined["pools"], report["pools"], strict=True):
        assert all(runs == original["curves"][s] * 2 for s, runs in pool["curves"].items())
        assert pool["target"] == pytest.approx(original["target"])
        assert pool["labels_to_reach"]["random"]["per_seed"] == original["labels_to_reach"]["random"]["per_seed"] * 2
