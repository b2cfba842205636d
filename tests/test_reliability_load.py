"""The load test in short (bench/load.py has the full one): 8 annotator processes × 15 judgments
each, with double submits, racing double clicks, undos and skips, on a SQLite file and on a real
PostgreSQL server. Nothing lost, nothing duplicated, no error surfaced to any simulated user."""

from __future__ import annotations

import re
import sys
from dataclasses import replace

import pytest

from tests.reliability_helpers import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import LoadConfig, run_load  # noqa: E402

LINE = re.compile(r"^annotators=8 judgments=120 lost=0 duplicated=0 errors=0 rate=[0-9.]+/s "
                  r"p50=[0-9.]+ms p95=[0-9.]+ms p99=[0-9.]+ms$")

# Flat out (no think time): the harshest interleaving for the writer queue and the row locks.
CONFIG = LoadConfig(annotators=8, judgments=15, overlap=2, think_ms=0, double_submit_rate=0.2, race_rate=0.15,
                    undo_rate=0.1, skip_rate=0.05, seed=11)


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_annotators(any_db_url):
    result = run_load(any_db_url, CONFIG)
    assert result.error_samples == [], result.error_samples
    assert (result.lost, result.duplicated, result.errors) == (0, 0, 0)
    assert result.judgments == CONFIG.annotators * CONFIG.judgments
    timed = result.judgments - CONFIG.annotators  # each process's first judgment is its untimed warm-up
    assert result.details["calls"] >= 2 * timed  # fetch + submit at least, per judgment
    assert LINE.match(result.line()), result.line()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_concurrent_annotators_without_the_writer_queue(sqlite_url):
    # The fallback (read-only folder for the lock file, or the switch off): SQLite's own
    # BEGIN IMMEDIATE + busy timeout must keep every judgment on its own. Every annotator
    # process's engine is made with the queue off (its LoadConfig).
    result = run_load(sqlite_url, replace(CONFIG, no_writer_queue=True))
    assert result.error_samples == [], result.error_samples
    assert (result.lost, result.duplicated, result.errors) == (0, 0, 0)
    assert result.judgments == CONFIG.annotators * CONFIG.judgments
