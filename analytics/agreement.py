"""Inter-rater agreement: Krippendorff's alpha (coincidence matrix), Cohen's kappa, percent agreement.

Units are comparisons (or, for safety flags, one response inside a comparison); intervals come from
a bootstrap that resamples comparisons. See ``docs/analytics.md`` for the definitions.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from analytics.records import JudgmentRecord, by_comparison
from analytics.stats import Estimate, bootstrap_estimate
from db.models import PREFERENCES, SAFETY_FLAGS

LEVELS = ("nominal", "ordinal", "interval")
ORDINAL_SCALE = tuple(range(-3, 4))


# --- Krippendorff's alpha -------------------------------------------------------------------

def unit_coincidences(counts: np.ndarray) -> np.ndarray:
    """Per-unit coincidence matrices from ``units × values`` counts; units with < 2 values give 0.

    >>> unit_coincidences(np.array([[2, 1]])).tolist()
    [[[1.0, 1.0], [1.0, 0.0]]]
    """
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1)
    outer = counts[:, :, None] * counts[:, None, :]
    diag = np.einsum("uk,kl->ukl", counts, np.eye(counts.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        result = (outer - diag) / (m - 1)[:, None, None]
    result[m < 2] = 0.0
    return result


def delta_squared(level: str, marginals: np.ndarray, values: Sequence[float] | None = None) -> np.ndarray:
    """Krippendorff's difference function δ² between every pair of values.

    ``marginals`` are the value totals n_c of the coincidence matrix (the ordinal metric uses them);
    ``values`` the numeric values (interval metric; default 0, 1, 2…).

    >>> delta_squared("nominal", np.array([3, 3])).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    >>> delta_squared("ordinal", np.array([2.0, 4.0, 2.0]))[0].tolist()
    [0.0, 9.0, 36.0]
    """
    k = len(marginals)
    if level == "nominal":
        return 1.0 - np.eye(k)
    if level == "interval":
        v = np.asarray(values if values is not None else range(k), dtype=float)
        return (v[:, None] - v[None, :]) ** 2
    if level == "ordinal":
        n = np.asarray(marginals, dtype=float)
        cum = np.concatenate([[0.0], np.cumsum(n)])
        low, high = np.minimum.outer(np.arange(k), np.arange(k)), np.maximum.outer(np.arange(k), np.arange(k))
        between = cum[high + 1] - cum[low]  # sum of n_g for g from c to k inclusive
        return (between - (n[low] + n[high]) / 2) ** 2
    raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")


def alpha_from_coincidences(o: np.ndarray, level: str = "nominal", values: Sequence[float] | None = None) -> float:
    """α = 1 − (n − 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck; nan when there is no variation at all."""
    o = np.asarray(o, dtype=float)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n <= 1:
        return math.nan
    delta = delta_squared(level, n_c, values)
    expected = float(n_c @ delta @ n_c)
    if expected <= 0:
        return math.nan
    return float(1.0 - (n - 1) * float((o * delta).sum()) / expected)


def value_counts(units: Sequence[Sequence[Hashable]], domain: Sequence[Hashable]) -> np.ndarray:
    """``units × values`` counts (values outside ``domain``, such as None, are missing).

    >>> value_counts([["a", "b", None], ["b"]], ["a", "b"]).tolist()
    [[1, 1], [0, 1]]
    """
    index = {v: i for i, v in enumerate(domain)}
    counts = np.zeros((len(units), len(domain)), dtype=int)
    for u, unit in enumerate(units):
        for value in unit:
            if value in index:
                counts[u, index[value]] += 1
    return counts


def krippendorff_alpha(
    reliability_data: Sequence[Sequence[Hashable]], level: str = "nominal",
    value_domain: Sequence[Hashable] | None = None,
) -> float:
    """Krippendorff's alpha of a coders × units table (None or nan = missing).

    The value domain defaults to the sorted observed values; give it for the ordinal level when
    some values on the scale were never used (their frequency, zero, enters the metric).

    Krippendorff (2011), *Computing Krippendorff's alpha-reliability*, four observers, twelve units:

    >>> data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    ...         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    ...         [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    ...         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]
    >>> round(krippendorff_alpha(data, "nominal"), 3), round(krippendorff_alpha(data, "interval"), 3)
    (0.743, 0.849)
    """
    rows = [[None if _missing(v) else v for v in row] for row in reliability_data]
    units = list(zip(*rows, strict=True)) if rows else []
    if value_domain is None:
        value_domain = sorted({v for unit in units for v in unit if v is not None})
    counts = value_counts(units, value_domain)
    o = unit_coincidences(counts).sum(axis=0)
    numeric = level == "interval"
    return alpha_from_coincidences(o, level, [float(v) for v in value_domain] if numeric else None)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- Cohen's kappa and percent agreement ----------------------------------------------------

def kappa_from_confusion(confusion: np.ndarray) -> float:
    """Cohen's kappa from a K × K table of (rater 1, rater 2) counts; nan when undefined.

    Cohen's classic 2 × 2 example (20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no): p_o = 0.7, p_e = 0.5.

    >>> round(kappa_from_confusion(np.array([[20, 5], [10, 15]])), 3)
    0.4
    """
    confusion = np.asarray(confusion, dtype=float)
    total = confusion.sum()
    if total <= 0:
        return math.nan
    p_o = np.trace(confusion) / total
    p_e = float(confusion.sum(axis=1) @ confusion.sum(axis=0)) / total**2
    if p_e >= 1.0:
        return math.nan
    return float((p_o - p_e) / (1 - p_e))


def cohen_kappa(rater1: Sequence[Hashable], rater2: Sequence[Hashable],
                labels: Sequence[Hashable] | None = None) -> float:
    """Cohen's kappa of two raters over the same items.

    >>> cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    0.5
    """
    if len(rater1) != len(rater2):
        raise ValueError("both raters must rate the same items")
    labels = list(labels) if labels is not None else sorted(set(rater1) | set(rater2))
    index = {v: i for i, v in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)))
    for x, y in zip(rater1, rater2, strict=True):
        confusion[index[x], index[y]] += 1
    return kappa_from_confusion(confusion)


def percent_agreement(counts: np.ndarray) -> np.ndarray:
    """Per unit, the share of ordered pairs of judgments that agree (nan for units with < 2).

    >>> percent_agreement(np.array([[2, 0], [1, 1], [3, 0]])).tolist()
    [1.0, 0.0, 1.0]
    """
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts * (counts - 1)).sum(axis=1) / (m * (m - 1))


# --- Agreement over judgments ----------------------------------------------------------------

@dataclass
class PairKappa:
    annotator_1: str
    annotator_2: str
    kappa: Estimate

    def as_dict(self) -> dict:
        return {"annotator_1": self.annotator_1, "annotator_2": self.annotator_2, **self.kappa.as_dict()}


@dataclass
class AgreementBlock:
    """Agreement of one variable (the preference, or one safety flag)."""

    name: str
    label: str
    alpha: Estimate
    percent: Estimate
    kappas: list[PairKappa] = field(default_factory=list)
    alpha_ordinal: Estimate | None = None
    prevalence: float = math.nan
    n_judgments: int = 0

    @property
    def mean_kappa(self) -> float:
        """Light's kappa: the mean of the pairwise kappas that are defined."""
        values = [p.kappa.value for p in self.kappas if math.isfinite(p.kappa.value)]
        return float(np.mean(values)) if values else math.nan

    def as_dict(self) -> dict:
        out = {"name": self.name, "label": self.label, "alpha": self.alpha.as_dict(),
               "percent_agreement": self.percent.as_dict(), "pairwise_kappa": [p.as_dict() for p in self.kappas],
               "mean_kappa": None if not math.isfinite(self.mean_kappa) else self.mean_kappa,
               "n_judgments": self.n_judgments}
        if self.alpha_ordinal is not None:
            out["alpha_ordinal"] = self.alpha_ordinal.as_dict()
        if math.isfinite(self.prevalence):
            out["prevalence"] = self.prevalence
        return out


@dataclass
class AgreementReport:
    n_comparisons: int
    n_annotators: int
    preference: AgreementBlock
    flags: list[AgreementBlock]

    def as_dict(self) -> dict:
        return {"n_comparisons": self.n_comparisons, "n_annotators": self.n_annotators,
                "preference": self.preference.as_dict(), "flags": [f.as_dict() for f in self.flags]}


def agreement_block(
    ratings: Mapping[Hashable, Mapping[str, Hashable]], domain: Sequence[Hashable], *,
    clusters: Mapping[Hashable, Hashable] | None = None, level: str = "nominal", name: str = "",
    label: str = "", min_shared_items: int = 10, n_bootstrap: int = 500, confidence: float = 0.95,
    seed: int = 0, ordinal_domain: Sequence[int] | None = None,
    ordinal_ratings: Mapping[Hashable, Mapping[str, int]] | None = None,
) -> AgreementBlock:
    """Alpha, percent agreement and pairwise kappas of ``ratings[unit][annotator] = value``.

    Only units rated by two or more annotators count. ``clusters`` maps a unit to the thing the
    bootstrap resamples (default: the unit itself).
    """
    rng = np.random.default_rng(seed)
    units = [u for u, r in ratings.items() if len(r) >= 2]
    clusters = clusters or {u: u for u in units}
    cluster_keys = list(dict.fromkeys(clusters[u] for u in units))
    cluster_index = {c: i for i, c in enumerate(cluster_keys)}
    unit_cluster = np.array([cluster_index[clusters[u]] for u in units], dtype=int)
    n_clusters = len(cluster_keys)

    def per_cluster(per_unit: np.ndarray) -> np.ndarray:
        out = np.zeros((n_clusters,) + per_unit.shape[1:])
        np.add.at(out, unit_cluster, per_unit)
        return out

    counts = value_counts([list(ratings[u].values()) for u in units], domain)
    o_c = per_cluster(unit_coincidences(counts)) if units else np.zeros((0, len(domain), len(domain)))
    alpha = bootstrap_estimate(lambda w: alpha_from_coincidences(np.tensordot(w, o_c, 1), level),
                               n_clusters, n_items=len(units), n_bootstrap=n_bootstrap,
                               confidence=confidence, rng=rng)
    agree_c = per_cluster(percent_agreement(counts)) if units else np.zeros(0)
    units_c = per_cluster(np.ones(len(units))) if units else np.zeros(0)
    percent = bootstrap_estimate(lambda w: float(w @ agree_c / (w @ units_c)) if w @ units_c else math.nan,
                                 n_clusters, n_items=len(units), n_bootstrap=n_bootstrap,
                                 confidence=confidence, rng=rng)
    alpha_ordinal = None
    if ordinal_ratings is not None and ordinal_domain is not None:
        ocounts = value_counts([list(ordinal_ratings[u].values()) for u in units], ordinal_domain)
        oo_c = per_cluster(unit_coincidences(ocounts)) if units else np.zeros((0,) + (len(ordinal_domain),) * 2)
        alpha_ordinal = bootstrap_estimate(
            lambda w: alpha_from_coincidences(np.tensordot(w, oo_c, 1), "ordinal"), n_clusters,
            n_items=len(units), n_bootstrap=n_bootstrap, confidence=confidence, rng=rng)
    kappas = _pairwise_kappas(ratings, units, domain, clusters, cluster_index, min_shared_items,
                              n_bootstrap, confidence, rng)
    return AgreementBlock(name=name, label=label, alpha=alpha, percent=percent, kappas=kappas,
                          alpha_ordinal=alpha_ordinal, n_judgments=int(counts.sum()))


def _pairwise_kappas(ratings, units, domain, clusters, cluster_index, min_shared, n_bootstrap, confidence, rng):
    k = len(domain)
    index = {v: i for i, v in enumerate(domain)}
    annotators = sorted({a for u in units for a in ratings[u]})
    results = []
    for first, second in combinations(annotators, 2):
        shared = [u for u in units if first in ratings[u] and second in ratings[u]]
        if len(shared) < max(min_shared, 1):
            continue
        local = {c: i for i, c in enumerate(dict.fromkeys(clusters[u] for u in shared))}
        tables = np.zeros((len(local), k, k))
        for u in shared:
            tables[local[clusters[u]], index[ratings[u][first]], index[ratings[u][second]]] += 1
        estimate = bootstrap_estimate(lambda w, t=tables: kappa_from_confusion(np.tensordot(w, t, 1)), len(local),
                                      n_items=len(shared), n_bootstrap=n_bootstrap, confidence=confidence, rng=rng)
        results.append(PairKappa(first, second, estimate))
    return results


def agreement_report(
    records: Sequence[JudgmentRecord], *, min_shared_items: int = 10, n_bootstrap: int = 500,
    confidence: float = 0.95, seed: int = 0, flags: Mapping[str, str] = SAFETY_FLAGS,
) -> AgreementReport:
    """Agreement on comparisons judged by two or more annotators: the preference (nominal alpha over
    a/b/tie/both_bad, ordinal alpha over the signed strength −3…+3, pairwise kappa, percent
    agreement) and each safety flag (present vs absent on each response)."""
    groups = {c: rs for c, rs in by_comparison(records).items() if len({r.annotator for r in rs}) >= 2}
    nominal = {c: {r.annotator: r.preferred for r in rs} for c, rs in groups.items()}
    ordinal = {c: {r.annotator: r.signed_strength for r in rs} for c, rs in groups.items()}
    common = dict(min_shared_items=min_shared_items, n_bootstrap=n_bootstrap, confidence=confidence)
    preference = agreement_block(nominal, PREFERENCES, name="preference", label="Preferred reply",
                                 ordinal_ratings=ordinal, ordinal_domain=ORDINAL_SCALE, seed=seed, **common)
    flag_blocks = []
    for offset, (flag, flag_label) in enumerate(flags.items(), start=1):
        ratings: dict = {}
        clusters: dict = {}
        for c, rs in groups.items():
            for side in ("a", "b"):
                ratings[(c, side)] = {r.annotator: int(flag in (r.flags_a if side == "a" else r.flags_b)) for r in rs}
                clusters[(c, side)] = c
        block = agreement_block(ratings, (0, 1), clusters=clusters, name=flag, label=flag_label,
                                seed=seed + offset, **common)
        total = sum(len(v) for v in ratings.values())
        block.prevalence = sum(sum(v.values()) for v in ratings.values()) / total if total else math.nan
        flag_blocks.append(block)
    annotators = {r.annotator for rs in groups.values() for r in rs}
    return AgreementReport(n_comparisons=len(groups), n_annotators=len(annotators),
                           preference=preference, flags=flag_blocks)
