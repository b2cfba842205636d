"""The judge gate's guarantee: a threshold chosen from clinicians' judgments (``therapref judge --gate``).

- The threshold choice on hand-built calibration items, the Clopper–Pearson bound checked against the
  binomial tail solved by bisection here (no scipy).
- Real databases (SQLite and PostgreSQL): a judge right 60% of the time against clinicians who agree
  80% gets no coverage; one right 95% of the time gets coverage; too few clinician judgments are
  refused; flagged comparisons and the judge's own safety concerns never stand in.
- The command: the line it prints, the override ``--min-confidence`` and bad options.
"""

from __future__ import annotations

import math

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from analytics.config import AnalyticsConfig
from analytics.gate import choose_threshold, clopper_pearson_lower
from analytics.judges import apply_gate, judges_section, load_judges_report
from candidates.fake_server import FakeOpenAIServer
from db.models import Comparison, JudgeVerdict
from tests.factories import build_judged_pool
from therapref.cli import app

runner = CliRunner()


def _tail(p: float, k: int, n: int) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), by hand."""
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


def _lower_by_hand(k: int, n: int, alpha: float) -> float:
    """The p at which P(X ≥ k | n, p) = alpha (the exact one-sided lower bound), by bisection."""
    low, high = 0.0, 1.0
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if _tail(mid, k, n) < alpha else (low, mid)
    return (low + high) / 2


# --- The threshold choice ---------------------------------------------------------------------------

def test_clopper_pearson_known_answer():
    assert clopper_pearson_lower(19, 20, 0.1) == pytest.approx(0.819, abs=5e-4)
    for k, n, alpha in ((19, 20, 0.1), (24, 25, 0.1), (28, 35, 0.05), (10, 10, 0.1)):
        assert clopper_pearson_lower(k, n, alpha) == pytest.approx(_lower_by_hand(k, n, alpha), abs=1e-9)
    assert clopper_pearson_lower(10, 10, 0.1) == pytest.approx(0.1 ** (1 / 10))


def test_fixed_sequence_walks_down_and_stops_at_the_first_failure():
    # 15 at 0.95, all agree: 15/15, bound 0.1^(1/15) = 0.858 ≥ 0.8, passes.
    # 10 at 0.85, 9 agree: 24/25 at ≥ 0.85, bound 0.853, passes.
    # 10 at 0.70, 4 agree: 28/35, bound 0.687, fails: the walk stops here,
    # although 40 more at 0.60 that all agree would give 68/75 (bound above 0.8) again.
    items = ([(0.95, True)] * 15 + [(0.85, True)] * 9 + [(0.85, False)] + [(0.7, True)] * 4 + [(0.7, False)] * 6
             + [(0.6, True)] * 40)
    assert _lower_by_hand(68, 75, 0.1) > 0.8
    g = choose_threshold(items, target=0.8, alpha=0.1, min_calibration=10)
    assert (g.threshold, g.agreeing, g.n, g.n_calibration) == (0.85, 24, 25, 75)
    assert g.bound == pytest.approx(_lower_by_hand(24, 25, 0.1), abs=1e-9)
    assert g.bound == pytest.approx(0.853, abs=5e-4)
    assert "threshold 0.85: its agreement with clinicians ≥ 0.85 at 90% confidence" in g.reason
    # A stricter confidence level: 24/25 at alpha 0.05 gives 0.828, still ≥ 0.8; a higher target fails at once.
    assert choose_threshold(items, target=0.8, alpha=0.05, min_calibration=10).threshold == 0.85
    strict = choose_threshold(items, target=0.9, alpha=0.1, min_calibration=10)
    assert strict.threshold is None and "no confidence threshold reaches the clinicians' 0.90" in strict.reason
    # Thresholds with fewer items above them than min_calibration (or than any perfect record needs: 11
    # for 0.8 at alpha 0.1) are skipped, not failed: here 0.99 (5 items) and 0.95 (5 more, one wrong).
    top = [(0.99, True)] * 5 + [(0.95, False)] + [(0.95, True)] * 4 + [(0.9, True)] * 30
    assert choose_threshold(top, target=0.8, min_calibration=30).threshold == 0.9
    assert choose_threshold(top, target=0.8, min_calibration=10).threshold == 0.9  # 9/10 < 11 items: skipped
    assert choose_threshold(top[:12], target=0.8, min_calibration=11).threshold is None  # 11/12: 0.72


def test_a_judge_right_sixty_percent_gets_no_threshold_whatever_its_confidence():
    items = [(0.5 + 0.5 * (i % 10) / 10, i % 5 < 3) for i in range(200)]  # right 60%, confident or not
    g = choose_threshold(items, target=0.8, alpha=0.1)
    assert g.threshold is None and not g.passed


# --- On a database ----------------------------------------------------------------------------------

N_CAL, N_OPEN = 50, 30


def _pool(session: Session, right: int) -> list[int]:
    """50 calibration comparisons judged by two clinicians, who agree on 40 (their agreement: 0.80);
    the judge agrees with them on ``right`` of those 40 (confidence 0.6–0.99, unrelated to being right)
    and says "tie", unsure (0.55), on the ten they split on. 30 more comparisons one clinician judged,
    where the judge would stand in. Comparison 0 is flagged; on 1 the judge reports a concern."""
    clinicians: list[list[str]] = []
    verdicts: list[tuple[str, float]] = []
    for i in range(N_CAL):
        majority = "a" if i % 2 else "b"
        if i < 40:
            clinicians.append([majority, majority])
            wrong = "b" if majority == "a" else "a"
            verdicts.append((majority if i < right else wrong, 0.6 + 0.01 * ((7 * i) % 40)))  # unrelated
        else:
            clinicians.append(["a", "b"])
            verdicts.append(("tie", 0.55))
    for i in range(N_OPEN):
        clinicians.append(["a"])
        verdicts.append(("a", 0.5 + 0.015 * i))
    return build_judged_pool(session, clinicians, verdicts, flagged={0, N_CAL}, concerns={1, N_CAL + 1})


def test_judge_right_sixty_percent_gets_no_coverage(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        _pool(session, right=24)
        result = apply_gate("sim", session=session)
        session.commit()
        assert not result.qualifies and result.stands_in == 0 and result.coverage == 0.0
        assert result.guarantee.target == pytest.approx(76 / 96)  # 40 of 48 safe ones agree: 76 of 96 items
        assert "no confidence threshold reaches the clinicians' 0.79 at 90% confidence" in str(result)
        assert str(result).endswith(f"none of its {N_CAL + N_OPEN} verdicts stand in.")
        assert session.exec(select(JudgeVerdict).where(JudgeVerdict.stands_in.is_(True))).all() == []


def test_judge_right_ninety_five_percent_gets_coverage_never_where_unsafe(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        ids = _pool(session, right=38)
        result = apply_gate("sim", session=session)
        session.commit()
        g = result.guarantee
        # Calibration: the 48 safe ones (less the flagged one and the judge's concern). Clinicians' agreement
        # there: 76 of 96 items. The judge: 36 of the 38 they agree on, none of the ten split ones ("tie").
        # At ≥ 0.61 (the least confidence on the 38): 36/38, bound 0.87, passes; at ≥ 0.55: 36/48, fails.
        assert (g.n_calibration, g.target) == (48, pytest.approx(76 / 96))
        assert (g.threshold, g.agreeing, g.n) == (0.61, 36, 38)
        assert result.qualifies, result.reason
        assert g.bound >= g.target and g.bound == pytest.approx(_lower_by_hand(g.agreeing, g.n, 0.1), abs=1e-9)
        assert result.min_confidence == g.threshold
        # Every safe verdict at or above the threshold stands in, none of the unsafe ones.
        verdicts = {v.comparison_id: v for v in session.exec(select(JudgeVerdict))}
        unsafe = {ids[0], ids[1], ids[N_CAL], ids[N_CAL + 1]}
        eligible = {cid for cid, v in verdicts.items() if cid not in unsafe and v.confidence >= g.threshold}
        assert {cid for cid, v in verdicts.items() if v.stands_in} == eligible
        assert result.covered == len(eligible) == result.stands_in
        assert result.safe == N_CAL + N_OPEN - 4 and result.coverage >= 0.3
        line = str(result)
        assert f"coverage {result.coverage:.0%} ({len(eligible)} of {N_CAL + N_OPEN - 4} safe verdicts)" in line
        assert f"threshold 0.61: its agreement with clinicians ≥ {g.bound:.2f} at 90% confidence (36 of 38" in line
        assert "48 calibration comparisons" in line and f"vs theirs with each other {76 / 96:.2f}" in line
        counts = {c.id: c.judgments_count for c in session.exec(select(Comparison))}
        assert all(counts[cid] == (3 if cid in eligible and cid in ids[:N_CAL] else 2) for cid in ids[:N_CAL])
        # The report shows what the gate chose, beside the kappa rule.
        report = load_judges_report(session=session, config=AnalyticsConfig(n_bootstrap=20))
        shown = report.as_dict()["judges"][0]["gate"]
        assert (shown["threshold"], shown["n_calibration"], shown["reason"]) == (g.threshold, 48, g.reason)
        status = next(b for b in judges_section(report).blocks if getattr(b, "caption", "").startswith("Verdicts"))
        assert status.rows[0][4] == g.reason and "guarantee" in status.header[4]
        # A target set by hand above what the data can show: everything is withdrawn again.
        strict = apply_gate("sim", session=session, target=0.99)
        session.commit()
        assert not strict.qualifies and strict.withdrawn == len(eligible) and strict.stands_in == 0
        assert "cannot show 0.99" in strict.reason or "reaches the target 0.99" in strict.reason


def test_too_few_clinician_judgments_are_refused(any_engine):
    clinicians = [["a", "a"]] * 12 + [["a"]] * 20
    verdicts = [("a", 0.95)] * 32
    with Session(any_engine, expire_on_commit=False) as session:
        build_judged_pool(session, clinicians, verdicts)
        result = apply_gate("sim", session=session)
        session.commit()
        assert not result.qualifies and result.stands_in == 0
        assert str(result) == ("Gate judge:sim: only 12 calibration comparisons (needs 30: judged by it and by at "
                               "least two clinicians): none of its 32 verdicts stand in.")
        # With fewer asked for, twelve perfect ones still cannot show the clinicians' own 1.00 (they agree on
        # all twelve); a target of 0.8 they can: 0.1^(1/12) = 0.825.
        unreachable = apply_gate("sim", session=session, min_calibration=10)
        assert not unreachable.qualifies and "a target of 1.00 cannot be shown" in unreachable.reason
        lower = apply_gate("sim", session=session, min_calibration=10, target=0.8)
        assert lower.qualifies and lower.guarantee.bound == pytest.approx(0.1 ** (1 / 12))
        assert "vs the target set by hand 0.80" in str(lower)


# --- The command ------------------------------------------------------------------------------------

def _registry(tmp_path, url: str) -> str:
    path = tmp_path / "candidates.toml"
    path.write_text(f'[[candidate]]\nname = "sim"\nprovider = "openai"\nmodel_id = "sim"\nbase_url = "{url}"\n'
                    "temperature = 0.0\nmax_retries = 0\n")
    return str(path)


def test_command_reports_the_guarantee_and_the_override(tmp_path, engine):
    with Session(engine, expire_on_commit=False) as session:
        _pool(session, right=38)
    db = str(engine.url.database)
    with FakeOpenAIServer() as server:
        base = ["judge", "--judge", "sim", "--config", _registry(tmp_path, server.url), "--db", db, "--no-progress"]
        guaranteed = runner.invoke(app, [*base, "--gate"])
        assert guaranteed.exit_code == 0, guaranteed.output
        assert "Gate judge:sim: threshold " in guaranteed.stdout and "at 90% confidence" in guaranteed.stdout
        assert "safe verdicts)" in guaranteed.stdout
        override = runner.invoke(app, [*base, "--gate", "--min-confidence", "0.95", "--alpha", "0.05"])
        assert override.exit_code == 0, override.output
        assert "at confidence ≥ 0.95 (set by hand) its agreement with clinicians is at least" \
            in override.stdout and "95% confidence" in override.stdout
        with Session(engine) as session:
            before = sorted((v.id, v.stands_in) for v in session.exec(select(JudgeVerdict)))
        bad = runner.invoke(app, [*base, "--gate", "--alpha", "1"])
        assert bad.exit_code != 0 and "--alpha must lie strictly between 0 and 1, not 1.0" in bad.output
        assert len(bad.output.strip().splitlines()) == 1
        with Session(engine) as session:
            assert sorted((v.id, v.stands_in) for v in session.exec(select(JudgeVerdict))) == before
        assert server.calls == []  # every comparison already judged: nothing asked
