"""Small statistics shared by the analyses: estimates with intervals, cluster bootstrap."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its bootstrap interval and the number of items behind it."""

    value: float
    low: float = math.nan
    high: float = math.nan
    n_items: int = 0

    def fmt(self, digits: int = 2) -> str:
        """
        >>> Estimate(0.5, 0.25, 0.75, 12).fmt()
        '0.50 [0.25, 0.75] (n=12)'
        >>> Estimate(math.nan, n_items=1).fmt()
        'n/a (n=1)'
        """
        if not math.isfinite(self.value):
            return f"n/a (n={self.n_items})"
        if math.isfinite(self.low) and math.isfinite(self.high):
            return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] (n={self.n_items})"
        return f"{self.value:.{digits}f} (n={self.n_items})"

    def as_dict(self) -> dict:
        return {"value": _num(self.value), "ci_low": _num(self.low), "ci_high": _num(self.high),
                "n_items": self.n_items}


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def bootstrap_weights(n_clusters: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``n_bootstrap × n_clusters`` counts: how often each cluster is drawn in each resample.

    >>> w = bootstrap_weights(5, 3, np.random.default_rng(0))
    >>> w.shape, w.sum(axis=1).tolist()
    ((3, 5), [5.0, 5.0, 5.0])
    """
    if n_clusters == 0 or n_bootstrap == 0:
        return np.zeros((0, n_clusters))
    draws = rng.integers(0, n_clusters, size=(n_bootstrap, n_clusters))
    draws += np.arange(n_bootstrap)[:, None] * n_clusters
    return np.bincount(draws.ravel(), minlength=n_bootstrap * n_clusters).reshape(n_bootstrap, n_clusters).astype(float)


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, ignoring undefined (nan) ones.

    >>> [round(x, 6) for x in percentile_interval(np.arange(101.0), 0.9)]
    [5.0, 95.0]
    """
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_estimate(
    statistic: Callable[[np.ndarray], float], n_clusters: int, *, n_items: int, n_bootstrap: int,
    confidence: float, rng: np.random.Generator,
) -> Estimate:
    """Evaluate ``statistic(weights)`` on all clusters (weights of ones) and on resamples.

    >>> est = bootstrap_estimate(lambda w: float(w @ np.arange(4.0) / w.sum()), 4, n_items=4,
    ...                          n_bootstrap=200, confidence=0.95, rng=np.random.default_rng(1))
    >>> est.value, est.low < 1.5 < est.high
    (1.5, True)
    """
    value = statistic(np.ones(n_clusters)) if n_clusters else math.nan
    if not math.isfinite(value) or n_bootstrap == 0:
        return Estimate(value, n_items=n_items)
    weights = bootstrap_weights(n_clusters, n_bootstrap, rng)
    replicates = np.array([statistic(w) for w in weights])
    low, high = percentile_interval(replicates, confidence)
    return Estimate(float(value), low, high, n_items)
