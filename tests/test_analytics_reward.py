"""Reward model vs clinicians with any scorer (a length-based one here; no torch needed)."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from analytics.reward_eval import (
    held_out_comparison_ids,
    length_scorer,
    majority_items,
    reward_vs_clinicians,
)
from db.crud import add_judgment
from db.engine import make_engine
from db.migrate import upgrade
from db.rules import Sources
from tests.factories import PATIENT_MESSAGES, build_project


@pytest.fixture(scope="module")
def module_session(tmp_path_factory):
    """One database for the whole module (the tests only read it)."""
    engine = make_engine(tmp_path_factory.mktemp("reward") / "therapref.db")
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


@pytest.fixture(scope="module")
def panel(module_session: Session):
    """6 comparisons (warm long reply vs terse "Okay."), 3 clinicians: majorities for warm on 1-3,
    for terse on 4, a tie majority on 5, a split vote on 6 (2 judges)."""
    session = module_session
    project = build_project(session, n_prompts=6, n_clinicians=3, judgments_required=3)
    plan = {0: "www", 1: "wwt", 2: "www", 3: "ttw", 4: "==w", 5: "wt"}
    for index, votes in plan.items():
        comparison = project.comparisons[index]
        warm_side = "a" if project.responses[(comparison.prompt_id, "warm")].id == comparison.response_a_id else "b"
        terse_side = "b" if warm_side == "a" else "a"
        for clinician, vote in zip(project.clinicians, votes, strict=False):
            preferred = {"w": warm_side, "t": terse_side, "=": "tie"}[vote]
            add_judgment(comparison, clinician, preferred, session=session, strength=2)
    module_session.commit()
    return project


def test_majority_items_skip_ties_and_split_votes(module_session, panel):
    items = majority_items(session=module_session)
    assert [i.comparison_id for i in items] == [c.id for c in panel.comparisons[:4]]
    assert items[0].messages[0]["role"] == "system"
    assert items[0].messages[-1]["role"] == "user"
    assert {items[0].model_a, items[0].model_b} == {"warm", "terse"}
    assert items[0].votes == 3
    # Only source annotators: none here.
    assert majority_items(session=module_session, sources=Sources.parse("imported")) == []
    subset = majority_items(session=module_session, comparison_ids=[panel.comparisons[3].id])
    assert [i.comparison_id for i in subset] == [panel.comparisons[3].id]


def test_length_scorer_agreement_and_disagreements(module_session, panel):
    items = majority_items(session=module_session)
    result = reward_vs_clinicians(items, length_scorer, n_bootstrap=100)
    assert result.n_items == 4
    assert result.agreement.value == 0.75
    assert result.length_baseline.value == 0.75  # the scorer *is* the length baseline
    assert result.n_disagreements == 1
    miss = result.disagreements[0]
    assert miss.comparison_id == panel.comparisons[3].id
    assert miss.prompt == PATIENT_MESSAGES[3]
    assert miss.majority != miss.model_choice
    assert miss.margin == abs(miss.score_a - miss.score_b) > 0
    assert result.as_dict()["disagreements"][0]["comparison_id"] == miss.comparison_id


def test_batch_scorer_scores_each_reply_once(module_session, panel):
    class Batch:
        calls: list = []

        def score_batch(self, inputs):
            self.calls.append(len(inputs))
            return [-len(reply) for _, reply in inputs]  # prefers short replies

    scorer = Batch()
    result = reward_vs_clinicians(majority_items(session=module_session), scorer, n_bootstrap=0)
    assert scorer.calls == [8]  # 4 comparisons x 2 distinct replies, one batch
    assert result.agreement.value == 0.25
    assert result.n_disagreements == 3


def test_held_out_ids_follow_the_models_training_prompts(module_session, panel):
    trained = {f"prompt:{c.prompt_id}" for c in panel.comparisons[:4]}
    held = held_out_comparison_ids({"train_prompt_keys": sorted(trained)}, session=module_session)
    assert held == [c.id for c in panel.comparisons[4:]]
    assert held_out_comparison_ids({}, session=module_session) is None
