"""The generalisation benchmark (bench/reward_generalisation.py) in its smoke mode: three domains left
out in turn, a tiny random BERT, one seed. Checks the printed table and the JSON: one row per held-out
domain with an accuracy in [0, 1], its 95% interval and the length baselines, the mean over domains, the
calibration errors and the targets, that no held-out domain's prompt is in the training set of its fold, and
that shares of a run put back together (``--combine``) give the same figures. The in-distribution mode
(``--split random``): one random prompt split of the LLMEval² subsets, no test prompt trained on. The pure
helpers (better rule, seed ensemble) on known numbers."""

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

from bench.reward_generalisation import (  # noqa: E402
    COUNSEL_CHAT,
    ECE_METRICS,
    LLMEVAL,
    METRICS,
    RANDOM_DOMAINS,
    RANDOM_SPLIT,
    SMOKE_DOMAINS,
    better_rule,
    load_domains,
    main,
    prompt_digest,
    seed_ensemble,
)

pytestmark = pytest.mark.slow


def _in_unit(value: float) -> bool:
    return 0.0 <= value <= 1.0


def _run_smoke(tmp_path, *extra: str) -> tuple[str, dict]:
    base = tiny_reward_base(tmp_path / "tiny-bert")
    out = tmp_path / "generalisation.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(PYTHON), str(ROOT / "bench" / "reward_generalisation.py"), "--smoke",
                           "--base-model", str(base), "--json", str(out), *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_better_rule_and_seed_ensemble():
    assert better_rule(0.3) == pytest.approx(0.7) and better_rule(0.55) == pytest.approx(0.55)
    # Two members: their mean difference decides (pair a: +1 and -0.5 → right; pair b: -2 and +1 → wrong);
    # pair c was scored by one seed only and is left out.
    rows = [{"test_pair_ids": ["a", "b", "c"], "test_hybrid_diffs": [1.0, -2.0, 5.0],
             "test_network_diffs": [0.0, 0.0, 0.0]},
            {"test_pair_ids": ["b", "a"], "test_hybrid_diffs": [1.0, -0.5], "test_network_diffs": [0.0, 0.0]}]
    ensemble = seed_ensemble(rows)
    assert ensemble["n_members"] == 2 and ensemble["n_pairs"] == 2
    assert ensemble["hybrid"] == 0.5 and ensemble["network"] == 0.5  # ties count half
    assert ensemble["network_ece"] == 0.0 and 0.0 < ensemble["hybrid_ece"] < 1.0
    assert "length_baseline" not in ensemble
    for row, longer in zip(rows, ([1.0, 0.0, 1.0], [0.0, 1.0]), strict=True):
        row["test_longer_chosen"] = longer  # the length rule on the common pairs: right on a, wrong on b
    assert seed_ensemble(rows)["length_baseline"] == 0.5
    assert seed_ensemble(rows[:1]) is None


@pytest.mark.timeout(300)
def test_smoke_run_leaves_each_domain_out(tmp_path, shared_data):
    stdout, report = _run_smoke(tmp_path)

    table = stdout.split("\nheld out", 1)[1].split("\ncalibration (ECE)", 1)[0].splitlines()
    for name in SMOKE_DOMAINS:
        assert sum(line.startswith(name + " ") for line in table) == 1, stdout
    assert sum(line.startswith("mean over domains") for line in table) == 1, stdout

    assert [row["held_out"] for row in report["held_out"]] == list(SMOKE_DOMAINS)
    for row in report["held_out"]:
        assert row["n_test"] == 6 and row["n_seeds"] == 1 and row["ensemble"] is None  # an ensemble needs 2 seeds
        for metric in ECE_METRICS:
            assert _in_unit(row[metric]["mean"]), (row["held_out"], metric)
        assert row["better_rule"] == pytest.approx(max(row["length_baseline"]["mean"],
                                                       row["reverse_length_baseline"]["mean"]))
        assert row["hybrid_vs_rule"] == pytest.approx(row["hybrid"]["mean"] - row["better_rule"])
        for metric in METRICS:
            entry = row[metric]
            low, high = entry["ci"]
            assert _in_unit(entry["mean"]) and 0.0 <= low <= entry["mean"] <= high <= 1.0, (row["held_out"], metric)
        assert row["reverse_length_baseline"]["mean"] == pytest.approx(1.0 - row["length_baseline"]["mean"])
    overall = report["mean_over_domains"]
    assert overall["n_domains"] == 3
    for metric in METRICS + ECE_METRICS:
        mean = sum(row[metric]["mean"] for row in report["held_out"]) / 3
        assert overall[metric]["mean"] == pytest.approx(mean) and _in_unit(overall[metric]["mean"])
    targets = report["targets"]
    for score in ("hybrid", "network"):
        gaps = {row["held_out"]: row[f"{score}_vs_rule"] for row in report["held_out"]}
        assert targets[score]["worst_gap"] == pytest.approx(min(gaps.values()))
        assert targets[score]["worst_domain"] == min(gaps, key=gaps.get)
        assert targets[score]["mean_target_met"] == (targets[score]["mean_gain"] >= 0.05)
    assert "calibration (ECE)" in stdout and "mean ECE" in stdout and "targets:" in stdout

    # Leave one out, really: each fold trains on the other domains only, and on no prompt of the held-out one.
    domains = load_domains(LLMEVAL, COUNSEL_CHAT, SMOKE_DOMAINS)
    digests = {name: {prompt_digest(p) for p in pairs} for name, pairs in domains.items()}
    assert len(report["runs"]) == 3
    for run in report["runs"]:
        held_out = run["held_out"]
        assert run["train_domains"] == sorted(set(SMOKE_DOMAINS) - {held_out})
        assert run["n_test"] == 6 and len(run["test_prompts"]) >= 2 and run["n_train"] > 0
        assert set(run["test_prompts"]) <= digests[held_out]
        assert not set(run["train_prompts"]) & digests[held_out]
        assert _in_unit(run["hybrid"]) and _in_unit(run["network"]) and _in_unit(run["length_baseline"])

    # A run split over processes (--held-out) and put back together (--combine) gives the same figures.
    shares = []
    for part in (SMOKE_DOMAINS[:1], SMOKE_DOMAINS[1:]):
        share = {**report, "settings": {**report["settings"], "held_out": list(part)},
                 "runs": [run for run in report["runs"] if run["held_out"] in part]}
        shares.append(tmp_path / f"share{len(shares)}.json")
        shares[-1].write_text(json.dumps(share))
    combined = tmp_path / "combined.json"
    assert main(["--combine", *map(str, shares), "--json", str(combined)]) == 0
    again = json.loads(combined.read_text())
    for metric in METRICS + ECE_METRICS:
        assert again["mean_over_domains"][metric] == pytest.approx(report["mean_over_domains"][metric])
    for score in ("hybrid", "network"):
        assert again["targets"][score] == pytest.approx(report["targets"][score])
    with pytest.raises(SystemExit, match="run is in two files"):
        main(["--combine", str(shares[0]), str(shares[0])])


@pytest.mark.timeout(300)
def test_smoke_in_distribution_split(tmp_path, shared_data):
    stdout, report = _run_smoke(tmp_path, "--split", "random")
    assert report["settings"]["split"] == "random" and report["settings"]["domains"] == list(RANDOM_DOMAINS[1])
    assert "in distribution" in stdout and f"\n{RANDOM_SPLIT} " in stdout
    [row] = report["held_out"]
    assert row["held_out"] == RANDOM_SPLIT and row["n_seeds"] == 1
    for metric in METRICS:
        assert _in_unit(row[metric]["mean"])
    [run] = report["runs"]
    assert run["train_domains"] == sorted(RANDOM_DOMAINS[1]) and run["n_train"] > 0 and run["n_test"] > 0
    # A random split by prompt: the test prompts come from the same file and none is trained on.
    domains = load_domains(LLMEVAL, COUNSEL_CHAT, RANDOM_DOMAINS[1])
    file_prompts = {prompt_digest(p) for pairs in domains.values() for p in pairs}
    assert set(run["test_prompts"]) <= file_prompts
    assert not set(run["train_prompts"]) & set(run["test_prompts"])


@pytest.mark.timeout(300)
def test_smoke_head_only_reads_features_once(tmp_path, shared_data):
    """``--head-only``: the frozen base reads every pair once (kept in ``--features-cache``), each fold fits
    only the head; the in-distribution run then reuses the cached features."""
    cache = tmp_path / "features.pt"
    stdout, report = _run_smoke(tmp_path, "--head-only", "--features-cache", str(cache))
    assert " replies in " in stdout and "head only, l2 1" in stdout and cache.exists()
    assert report["settings"]["head_only"] is True
    assert [row["held_out"] for row in report["held_out"]] == list(SMOKE_DOMAINS)
    domains = load_domains(LLMEVAL, COUNSEL_CHAT, SMOKE_DOMAINS)
    digests = {name: {prompt_digest(p) for p in pairs} for name, pairs in domains.items()}
    for run in report["runs"]:
        assert run["n_train"] > 0 and run["n_test"] == 6 and _in_unit(run["network"])
        assert not set(run["train_prompts"]) & digests[run["held_out"]]
    stdout, report = _run_smoke(tmp_path, "--head-only", "--features-cache", str(cache), "--split", "random")
    assert f"replies read from {cache}" in stdout and " replies in " not in stdout  # nothing read again
    [run] = report["runs"]
    assert run["n_test"] > 0 and _in_unit(run["network"]) and _in_unit(run["hybrid"])
