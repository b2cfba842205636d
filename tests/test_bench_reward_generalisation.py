"""The generalisation benchmark (bench/reward_generalisation.py) in its smoke mode: three domains left
out in turn, a tiny random BERT, one seed. Checks the printed table and the JSON: one row per held-out
domain with an accuracy in [0, 1], its 95% interval and the length baselines, the mean over domains, and
that no held-out domain's prompt is in the training set of its fold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.reliability_helpers import PYTHON, ROOT, tiny_reward_base

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.reward_generalisation import (  # noqa: E402
    COUNSEL_CHAT,
    LLMEVAL,
    METRICS,
    SMOKE_DOMAINS,
    load_domains,
    prompt_digest,
)

pytestmark = pytest.mark.slow


def _in_unit(value: float) -> bool:
    return 0.0 <= value <= 1.0


@pytest.mark.timeout(300)
def test_smoke_run_leaves_each_domain_out(tmp_path, shared_data):
    base = tiny_reward_base(tmp_path / "tiny-bert")
    out = tmp_path / "generalisation.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(PYTHON), str(ROOT / "bench" / "reward_generalisation.py"), "--smoke",
                           "--base-model", str(base), "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    table = proc.stdout.split("\nheld out", 1)[1].splitlines()
    for name in SMOKE_DOMAINS:
        assert sum(line.startswith(name + " ") for line in table) == 1, proc.stdout
    assert sum(line.startswith("mean over domains") for line in table) == 1, proc.stdout

    report = json.loads(out.read_text())
    assert [row["held_out"] for row in report["held_out"]] == list(SMOKE_DOMAINS)
    for row in report["held_out"]:
        assert row["n_test"] == 6 and row["n_seeds"] == 1
        for metric in METRICS:
            entry = row[metric]
            low, high = entry["ci"]
            assert _in_unit(entry["mean"]) and 0.0 <= low <= entry["mean"] <= high <= 1.0, (row["held_out"], metric)
        assert row["reverse_length_baseline"]["mean"] == pytest.approx(1.0 - row["length_baseline"]["mean"])
    overall = report["mean_over_domains"]
    assert overall["n_domains"] == 3
    for metric in METRICS:
        mean = sum(row[metric]["mean"] for row in report["held_out"]) / 3
        assert overall[metric]["mean"] == pytest.approx(mean) and _in_unit(overall[metric]["mean"])

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
