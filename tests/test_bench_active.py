"""The active-selection benchmark (bench/active.py) in its smoke mode: both pools, a tiny random BERT,
one seed, three rounds, the judge gate. Checks the printed curves and the JSON: a curve per strategy
that grows by the batch each round, accuracies in [0, 1], the labels-to-reach figures consistent with
the curves, the gate rows, and that no held-out prompt is ever in the pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.reliability_helpers import PYTHON, ROOT, tiny_reward_base

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.active import POOLS, STRATEGIES, THRESHOLDS, labels_to_reach  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_smoke_run_prints_curves_and_the_gate(tmp_path, shared_data):
    base = tiny_reward_base(tmp_path / "tiny-bert")
    out = tmp_path / "active.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(PYTHON), str(ROOT / "bench" / "active.py"), "--smoke", "--gate",
                           "--base-model", str(base), "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for pool in POOLS:
        assert f"learning curve, {pool}" in proc.stdout
    assert proc.stdout.count("labels to reach random's final accuracy") == 2
    assert proc.stdout.count("judge gate (") == 2

    report = json.loads(out.read_text())
    settings = report["settings"]
    assert [r["pool"] for r in report["pools"]] == list(POOLS)
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
        gate = pool["gate"]
        assert [r["threshold"] for r in gate["rows"]] == list(THRESHOLDS)
        shares = [r["judge_share"] for r in gate["rows"]]
        assert all(0.0 <= s <= 1.0 for s in shares)
        assert shares == sorted(shares, reverse=True)  # a stricter threshold leaves more to clinicians
        assert 0.0 <= gate["judge_accuracy"] <= 1.0
