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


# --- A small real database with everything a report shows ---------------------------------------

HOSTILE_NAME = "<script>alert('name')</script>"
HOSTILE_REPLY = "Try this <img src=x onerror=alert('reply')> **now** [link](http://example.com)"


def build_rich_project(session, *, n_prompts: int = 6, n_clinicians: int = 3):  # noqa: ANN001, ANN201
    """build_project plus a third candidate with a hostile reply, a clinician with a hostile username,
    disagreements, ties, safety flags, screen sides, timings, topics and a gold comparison."""
    from db.auth import create_annotator
    from db.crud import add_comparison, add_judgment, add_response, get_or_create_candidate
    from tests.factories import PASSWORD, build_project

    project = build_project(session, n_prompts=n_prompts, n_clinicians=n_clinicians, judgments_required=3)
    project.clinicians.append(create_annotator(HOSTILE_NAME, PASSWORD, session=session))
    odd, _ = get_or_create_candidate("odd <b>model</b>", session=session, provider="local")
    rng = np.random.default_rng(0)
    comparisons = list(project.comparisons)
    for i, prompt in enumerate(project.prompts):
        prompt.topic = "sleep" if i % 2 else "self-worth"
        session.add(prompt)
        text = HOSTILE_REPLY if i == 0 else f"Reply {i}: breathe slowly."
        reply, _ = add_response(prompt, odd, text, session=session)
        for other in ("warm", "terse"):
            comparison, _ = add_comparison(reply, project.responses[(prompt.id, other)], session=session,
                                           judgments_required=3)
            comparisons.append(comparison)
    for n, comparison in enumerate(comparisons):
        for k, clinician in enumerate(project.clinicians):
            if (n + k) % 5 == 4:
                continue
            preferred = str(rng.choice(["a", "b", "tie", "both_bad"], p=[0.5, 0.3, 0.1, 0.1]))
            add_judgment(comparison, clinician, preferred, session=session, strength=int(rng.integers(1, 4)),
                         shown_left=str(rng.choice(["a", "b"])), ms_spent=int(rng.integers(800, 30000)),
                         flags_a=["dismissive"] if rng.random() < 0.2 else [],
                         flags_b=["misses_risk", "toxic"] if rng.random() < 0.15 else [], guideline_version=1)
    comparisons[0].gold_answer = "a"
    session.add(comparisons[0])
    session.commit()
    return project
