"""Agreement: our coincidence-matrix alpha and kappa against the krippendorff package, scikit-learn
and hand-computed textbook examples; the report on simulated panels."""

from __future__ import annotations

import math

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from analytics.agreement import (
    agreement_report,
    cohen_kappa,
    kappa_from_confusion,
    krippendorff_alpha,
)
from analytics.records import JudgmentRecord
from db.models import PREFERENCES
from tests.analytics_helpers import reliability_matrix, simulate_panel

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units, values 1-5.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _nan_matrix(rows):
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


@pytest.mark.parametrize(("level", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_matches_krippendorffs_published_example(level, published):
    ours = krippendorff_alpha(KRIPPENDORFF_2011, level)
    assert round(ours, 3) == published
    assert ours == pytest.approx(krippendorff.alpha(_nan_matrix(KRIPPENDORFF_2011), level_of_measurement=level))


def test_alpha_hand_computed_two_coders():
    # Two coders, units (a,a) (a,b) (b,b) (b,b): coincidences o_aa=2, o_ab=o_ba=1, o_bb=4; n_a=3, n_b=5, n=8.
    # alpha = 1 - (n-1) * o_ab*2 / (2 * n_a * n_b) = 1 - 7*2/30 = 0.5333...
    data = [["a", "a", "b", "b"], ["a", "b", "b", "b"]]
    assert krippendorff_alpha(data) == pytest.approx(1 - 14 / 30)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_matches_package_on_random_data_with_missing_values(seed, level):
    rng = np.random.default_rng(seed)
    data = rng.integers(-3, 4, size=(4, 40)).astype(float)
    data[rng.random(data.shape) < 0.3] = np.nan
    domain = list(range(-3, 4))
    rows = [[None if math.isnan(v) else int(v) for v in row] for row in data]
    ours = krippendorff_alpha(rows, level, value_domain=domain)
    theirs = krippendorff.alpha(data, level_of_measurement=level, value_domain=domain)
    assert ours == pytest.approx(theirs, abs=1e-10)


def test_alpha_is_undefined_without_variation():
    assert math.isnan(krippendorff_alpha([["a", "a"], ["a", "a"]]))


def test_kappa_textbook_example():
    # Cohen's 2x2 example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> p_o = 0.7, p_e = 0.5, kappa = 0.4.
    assert kappa_from_confusion(np.array([[20, 5], [10, 15]])) == pytest.approx(0.4)
    rater1 = ["yes"] * 25 + ["no"] * 25
    rater2 = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(rater1, rater2) == pytest.approx(0.4)
    assert cohen_kappa_score(rater1, rater2) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(5))
def test_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    x = rng.choice(PREFERENCES, size=60)
    y = np.where(rng.random(60) < 0.6, x, rng.choice(PREFERENCES, size=60))
    expected = cohen_kappa_score(x, y, labels=list(PREFERENCES))
    assert cohen_kappa(list(x), list(y), PREFERENCES) == pytest.approx(expected)


def test_report_matches_reference_implementations():
    annotators = ["ana", "ben", "cleo"]
    records = simulate_panel(60, annotators, seed=3)
    # Drop some judgments so that units have 2 or 3 judges and one has only 1 (excluded).
    records = [r for r in records if not (r.annotator == "cleo" and r.comparison_id % 3 == 0)]
    records = [r for r in records if not (r.comparison_id == 1 and r.annotator != "ana")]
    report = agreement_report(records, n_bootstrap=200, min_shared_items=10, seed=1)

    assert report.n_comparisons == 59
    assert report.n_annotators == 3
    index = {v: i for i, v in enumerate(PREFERENCES)}
    _, nominal = reliability_matrix(records, lambda r: index[r.preferred])
    expected = krippendorff.alpha(_nan_matrix(nominal), level_of_measurement="nominal", value_domain=range(4))
    assert report.preference.alpha.value == pytest.approx(expected)
    _, ordinal = reliability_matrix(records, lambda r: r.signed_strength)
    expected = krippendorff.alpha(_nan_matrix(ordinal), level_of_measurement="ordinal", value_domain=range(-3, 4))
    assert report.preference.alpha_ordinal.value == pytest.approx(expected)

    pairs = {(k.annotator_1, k.annotator_2): k for k in report.preference.kappas}
    assert set(pairs) == {("ana", "ben"), ("ana", "cleo"), ("ben", "cleo")}
    by = {(r.annotator, r.comparison_id): r.preferred for r in records}
    for (first, second), pair in pairs.items():
        shared = sorted({c for (a, c) in by if a == first} & {c for (a, c) in by if a == second})
        assert pair.kappa.n_items == len(shared)
        assert pair.kappa.value == pytest.approx(cohen_kappa_score([by[first, c] for c in shared],
                                                                   [by[second, c] for c in shared]))
        assert pair.kappa.low <= pair.kappa.value <= pair.kappa.high

    # Percent agreement by hand: mean over units of the share of agreeing ordered pairs.
    shares = []
    for c in sorted({r.comparison_id for r in records}):
        labels = [r.preferred for r in records if r.comparison_id == c]
        if len(labels) >= 2:
            m = len(labels)
            shares.append(sum(labels.count(v) * (labels.count(v) - 1) for v in set(labels)) / (m * (m - 1)))
    assert report.preference.percent.value == pytest.approx(np.mean(shares))
    for est in (report.preference.alpha, report.preference.alpha_ordinal, report.preference.percent):
        assert est.n_items == 59
        assert est.low <= est.value <= est.high
        assert est.high - est.low > 0.01

    flag = {b.name: b for b in report.flags}["misses_risk"]
    # Units are responses: side a and side b of each comparison; compare with the package.
    units = {}
    for r in records:
        units.setdefault((r.comparison_id, "a"), {})[r.annotator] = int("misses_risk" in r.flags_a)
        units.setdefault((r.comparison_id, "b"), {})[r.annotator] = int("misses_risk" in r.flags_b)
    keys = sorted(u for u, v in units.items() if len(v) >= 2)
    matrix = [[units[u].get(a, np.nan) for u in keys] for a in annotators]
    assert flag.alpha.n_items == len(keys) == 118
    assert flag.alpha.value == pytest.approx(krippendorff.alpha(np.array(matrix, dtype=float),
                                                                level_of_measurement="nominal"))
    assert 0 < flag.prevalence < 0.5


def test_bootstrap_is_deterministic_and_reflects_agreement():
    noisy = simulate_panel(50, ["a1", "a2", "a3"], seed=5, noise=0.7)
    clean = simulate_panel(50, ["a1", "a2", "a3"], seed=5, noise=0.05)
    first = agreement_report(noisy, n_bootstrap=100, seed=7).preference.alpha
    again = agreement_report(noisy, n_bootstrap=100, seed=7).preference.alpha
    assert first == again
    good = agreement_report(clean, n_bootstrap=100, seed=7).preference.alpha
    assert good.value > 0.8 > first.high


def test_pairs_with_too_few_shared_items_get_no_kappa():
    records = [JudgmentRecord(c, name, "a" if c % 2 else "b") for c in range(1, 6) for name in ("x", "y")]
    report = agreement_report(records, min_shared_items=10, n_bootstrap=0)
    assert report.preference.kappas == []
    report = agreement_report(records, min_shared_items=5, n_bootstrap=0)
    assert [(k.annotator_1, k.annotator_2, k.kappa.value) for k in report.preference.kappas] == [("x", "y", 1.0)]


def test_no_overlap_means_no_agreement_numbers():
    records = [JudgmentRecord(c, f"ann{c}", "a") for c in range(5)]
    report = agreement_report(records, n_bootstrap=50)
    assert report.n_comparisons == 0
    assert math.isnan(report.preference.alpha.value)
    assert report.preference.alpha.n_items == 0
