"""The active-selection benchmark (bench/active.py) in its smoke mode: both real pools, a tiny random BERT, one
seed (and the simulated pool with a tiny random Llama, last test). The frozen learner with the judge gate
(three rounds), and the fine-tuned reward model (two rounds of two training steps each, all three strategies).
Checks the printed curves and the JSON: a curve per strategy that grows by the batch each round, accuracies in
[0, 1], the labels-to-reach figures consistent with the curves, the gate rows, that no held-out prompt is ever
in the pool, and (finetune) that each round's new labels are unlabelled pool pairs and that the strategies
choose differently."""

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

from bench.active import REAL_POOLS, STRATEGIES, THRESHOLDS, labels_to_reach, main  # noqa: E402

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
        assert set(pool["curves"]) == set(settings["strategies"]) and set(settings["strategies"]) <= set(STRATEGIES)
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
    stdout, report = run_smoke(tmp_path, REAL_POOLS, "--learner", "frozen", "--gate")
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


@pytest.mark.timeout(300)
def test_smoke_simulated_pool_with_the_head_only_learner(tmp_path, shared_data):
    """--data simulated: replies sampled by llama.cpp from a tiny random Llama (its GGUF), judged by the
    rubric of bench/loop.py, read once by the toolkit's head-only features (with the likelihood column),
    every strategy; the sampled pool and the features are cached, so a second run samples nothing."""
    from policy.gguf import convert_to_gguf
    from tests.tiny_models import tiny_llama

    base = tiny_llama(tmp_path / "tiny-llama")
    gguf = convert_to_gguf(base, outtype="f16").path
    out, cache = tmp_path / "sim.json", tmp_path / "cache"
    command = [str(PYTHON), str(ROOT / "bench" / "active.py"), "--smoke", "--data", "simulated", "--likelihood",
               "--base-model", str(base), "--sampler", str(gguf), "--questions", "16", "--replies", "5",
               "--max-tokens", "8", "--cache-dir", str(cache), "--json", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "learning curve, simulated" in proc.stdout and "95% of it" in proc.stdout
    assert "sampled 16/16 questions × 5 replies" in proc.stderr and "Reading replies" in proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    report = json.loads(out.read_text())
    (pool,) = report["pools"]
    saved = pool["saved"]
    assert last == (f"labels saved: {saved['best']} {saved['saving']:.0%} vs random ({saved['n_random']} → "
                    f"{saved['n_best']} labels, 1 seeds)")
    assert report["settings"]["learner"] == "headonly" and pool["pool"] == "simulated"
    check_curves(report)
    # held-out pairs are the noise-free rubric's: the preferred reply never scores lower
    from bench.loop import rubric_score
    from bench.simulated_pool import PoolSettings, judged_pairs

    groups = json.loads(next(cache.glob("simulated-*.json")).read_text())["groups"]
    assert len(groups) == 16 and all(len(g["replies"]) == 5 for g in groups)
    for pair in judged_pairs(groups, noisy=False):
        assert rubric_score(pair.prompt[-1][1], pair.chosen) > rubric_score(pair.prompt[-1][1], pair.rejected)
    assert PoolSettings(questions=16, replies=5, max_tokens=8, model=str(gguf)).key() in {
        p.stem for p in cache.glob("simulated-*.json")}
    # the second run reuses the cache: no sampling, no reading
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "sampled" not in again.stderr and "Reading replies" not in again.stderr
    assert again.stdout.strip().splitlines()[-1] == last
