"""Simulated judgments for the analytics tests (plain records, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from analytics.records import JudgmentRecord

START = datetime(2026, 3, 2, 9, tzinfo=UTC)


def simulate_panel(n_items: int, annotators: list[str], *, seed: int = 0, noise: float = 0.25,
                   flag_rate: float = 0.2) -> list[JudgmentRecord]:
    """Several annotators judging the same comparisons: each sees a latent truth and deviates with
    probability ``noise``; strengths and safety flags vary too."""
    rng = np.random.default_rng(seed)
    labels = ["a", "b", "tie", "both_bad"]
    records = []
    jid = 0
    for item in range(1, n_items + 1):
        truth = rng.choice(labels, p=[0.45, 0.35, 0.1, 0.1])
        true_flag_a = rng.random() < flag_rate
        for name in annotators:
            jid += 1
            label = truth if rng.random() > noise else rng.choice(labels)
            flag_a = true_flag_a if rng.random() > noise else not true_flag_a
            records.append(JudgmentRecord(
                comparison_id=item, annotator=name, preferred=str(label), strength=int(rng.integers(1, 4)),
                shown_left=str(rng.choice(["a", "b"])), flags_a=("misses_risk",) if flag_a else (),
                flags_b=("toxic",) if rng.random() < 0.1 else (), ms_spent=int(rng.integers(1000, 20000)),
                created_at=START + timedelta(hours=int(jid)), model_a="m1", model_b="m2", judgment_id=jid,
                len_a=int(rng.integers(50, 400)), len_b=int(rng.integers(50, 400))))
    return records


def reliability_matrix(records: list[JudgmentRecord], value) -> tuple[list[str], list[list]]:  # noqa: ANN001
    """Annotators × comparisons table (None = not judged), the krippendorff package's input."""
    annotators = sorted({r.annotator for r in records})
    items = sorted({r.comparison_id for r in records})
    index = {c: i for i, c in enumerate(items)}
    table = {a: [None] * len(items) for a in annotators}
    for r in records:
        table[r.annotator][index[r.comparison_id]] = value(r)
    return annotators, [table[a] for a in annotators]

