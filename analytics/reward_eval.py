"""A trained reward model against clinicians: on comparisons with a clear clinician majority,
how often does the model score the majority's reply higher, and where does it disagree?

Any scorer ``(messages, reply) -> float`` works, so this runs without torch in tests; the report
loads ``reward.RewardModel`` lazily.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from analytics.stats import Estimate, bootstrap_estimate
from db.models import Annotator, CandidateModel, Comparison, Judgment, Prompt, Response
from db.rules import CLINICIANS, Sources, longer_side, majority_label, prompt_conversation, reply_length

Scorer = Callable[[list[dict[str, str]], str], float]


@dataclass(frozen=True)
class MajorityItem:
    """A comparison whose judges chose a or b by a strict plurality."""

    comparison_id: int
    messages: list[dict[str, str]]
    text_a: str
    text_b: str
    majority: str
    votes: int
    model_a: str = ""
    model_b: str = ""
    response_a_id: int = 0
    response_b_id: int = 0


def majority_items(
    *, session: Session, sources: Sources = CLINICIANS, comparison_ids: Iterable[int] | None = None,
) -> list[MajorityItem]:
    """Comparisons whose judges' plurality preferred a or b (ties and both_bad majorities are left out)."""
    votes: dict[int, list[str]] = {}
    query = (select(Judgment.comparison_id, Judgment.preferred).join(Annotator, Annotator.id == Judgment.annotator_id)
             .where(sources.condition()))
    if comparison_ids is not None:
        query = query.where(Judgment.comparison_id.in_(list(comparison_ids)))
    for comparison_id, preferred in session.exec(query):
        votes.setdefault(comparison_id, []).append(preferred)
    majorities = {c: m for c, v in votes.items() if (m := majority_label(v)) in ("a", "b")}
    resp_a, resp_b = aliased(Response), aliased(Response)
    cand_a, cand_b = aliased(CandidateModel), aliased(CandidateModel)
    items = []
    ids = sorted(majorities)
    for start in range(0, len(ids), 500):
        rows = session.exec(
            select(Comparison, Prompt, resp_a, resp_b, cand_a.name, cand_b.name)
            .join(Prompt, Prompt.id == Comparison.prompt_id)
            .join(resp_a, resp_a.id == Comparison.response_a_id).join(resp_b, resp_b.id == Comparison.response_b_id)
            .join(cand_a, cand_a.id == resp_a.candidate_model_id).join(cand_b, cand_b.id == resp_b.candidate_model_id)
            .where(Comparison.id.in_(ids[start:start + 500])).order_by(Comparison.id))
        for comparison, prompt, a, b, name_a, name_b in rows:
            items.append(MajorityItem(comparison.id, prompt_conversation(prompt), a.text, b.text,
                                      majorities[comparison.id], len(votes[comparison.id]), name_a, name_b, a.id, b.id))
    return items


@dataclass
class Disagreement:
    comparison_id: int
    majority: str
    model_choice: str
    score_a: float
    score_b: float
    prompt: str
    text_a: str
    text_b: str
    model_a: str
    model_b: str

    @property
    def margin(self) -> float:
        return abs(self.score_a - self.score_b)

    def as_dict(self) -> dict:
        return {**self.__dict__, "margin": self.margin}


@dataclass
class RewardAgreement:
    agreement: Estimate
    length_baseline: Estimate
    n_items: int
    score_ties: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    n_disagreements: int = 0
    label: str = ""

    def as_dict(self) -> dict:
        return {"label": self.label, "agreement": self.agreement.as_dict(),
                "length_baseline": self.length_baseline.as_dict(), "n_items": self.n_items,
                "score_ties": self.score_ties, "n_disagreements": self.n_disagreements,
                "disagreements": [d.as_dict() for d in self.disagreements]}


def last_user_turn(messages: Sequence[dict[str, str]]) -> str:
    """
    >>> last_user_turn([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
    ...                 {"role": "user", "content": "again"}])
    'again'
    """
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")


def score_items(items: Sequence[MajorityItem], scorer: Scorer | object) -> list[tuple[float, float]]:
    """(score a, score b) per item; each distinct reply is scored once, in one batch when the scorer
    has ``score_batch`` (as ``reward.RewardModel`` does).

    >>> item = MajorityItem(1, [], "short", "a longer reply", "b", 2)
    >>> score_items([item], length_scorer)
    [(1.0, 3.0)]
    """
    keys, inputs = {}, []
    for item in items:
        for side, response_id, text in (("a", item.response_a_id, item.text_a), ("b", item.response_b_id, item.text_b)):
            key = ("r", response_id) if response_id else (item.comparison_id, side)
            if key not in keys:
                keys[key] = len(inputs)
                inputs.append((item.messages, text))
    if hasattr(scorer, "score_batch"):
        values = [float(v) for v in scorer.score_batch(inputs)]
    else:
        values = [float(scorer(messages, text)) for messages, text in inputs]

    def lookup(item: MajorityItem, side: str) -> float:
        response_id = item.response_a_id if side == "a" else item.response_b_id
        return values[keys[("r", response_id) if response_id else (item.comparison_id, side)]]

    return [(lookup(item, "a"), lookup(item, "b")) for item in items]


def reward_vs_clinicians(
    items: Sequence[MajorityItem], scorer: Scorer | object, *, n_bootstrap: int = 500, confidence: float = 0.95,
    seed: int = 0, max_disagreements: int = 25, label: str = "",
) -> RewardAgreement:
    """Share of majority items where ``scorer`` ranks the majority's reply higher (a score tie counts
    as half), next to the "longer reply wins" baseline; disagreements listed by score margin.

    ``scorer`` is ``(messages, reply) -> float`` or an object with ``score_batch(items)``.
    """
    scores = score_items(items, scorer)
    hits, length_hits, ties, disagreements = [], [], 0, []
    for item, (sa, sb) in zip(items, scores, strict=True):
        choice = "a" if sa > sb else ("b" if sb > sa else "tie")
        ties += choice == "tie"
        hits.append(1.0 if choice == item.majority else (0.5 if choice == "tie" else 0.0))
        longer = longer_side(item.text_a, item.text_b)
        length_hits.append(1.0 if longer == item.majority else (0.5 if longer == "tie" else 0.0))
        if choice not in (item.majority, "tie"):
            disagreements.append(Disagreement(item.comparison_id, item.majority, choice, sa, sb,
                                              last_user_turn(item.messages), item.text_a, item.text_b,
                                              item.model_a, item.model_b))
    rng = np.random.default_rng(seed)

    def share(values: list[float]) -> Estimate:
        arr = np.array(values)
        return bootstrap_estimate(lambda w: float(w @ arr / w.sum()) if w.sum() else math.nan, len(arr),
                                  n_items=len(arr), n_bootstrap=n_bootstrap, confidence=confidence, rng=rng)

    disagreements.sort(key=lambda d: (-d.margin, d.comparison_id))
    return RewardAgreement(share(hits), share(length_hits), len(items), ties, disagreements[:max_disagreements],
                           len(disagreements), label)


def length_scorer(messages: list[dict[str, str]], reply: str) -> float:
    """The baseline scorer: longer replies score higher, length in words as the baseline counts it.

    >>> length_scorer([], "four words of reply")
    4.0
    """
    return float(reply_length(reply))


def load_reward_model(path: str) -> object:
    """``reward.RewardModel.load(path)``, imported only here (torch loads only when asked for)."""
    from analytics.errors import AnalyticsError
    from db.errors import TheraPrefError
    from reward.scoring import RewardModel

    try:
        return RewardModel.load(path)
    except TheraPrefError:
        raise
    except (OSError, ValueError, KeyError) as exc:  # unreadable weights, wrong architecture, …
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AnalyticsError(f"{path}: cannot load the reward model ({first})") from exc


def held_out_comparison_ids(meta: dict, *, session: Session) -> list[int] | None:
    """Comparisons on prompts the reward model did not train on (``train_prompt_keys`` in its
    metadata, keys ``prompt:<id>``); None when the model folder records no training prompts."""
    trained = meta.get("train_prompt_keys")
    if trained is None:
        return None
    trained = set(trained)
    rows = session.exec(select(Comparison.id, Comparison.prompt_id)).all()
    return [cid for cid, pid in rows if f"prompt:{pid}" not in trained]
