"""Which comparisons clinicians see first (``Comparison.priority``; the app serves the highest first)
and which new pairs are worth creating under a budget (active selection).

Strategies:

- ``random``: seeded random priorities (the baseline every other strategy must beat).
- ``uncertainty``: the reward model's uncertainty about the pair (``ComparisonScore.uncertainty`` of
  the model's run: the members' disagreement for an ensemble, 1 − |2p − 1| for one model), computed
  and stored first where missing.
- ``disagreement``: how much the votes so far disagree (entropy of the a/b/tie/both_bad counts, in
  bits); a comparison with fewer than two votes has none yet.

Only open comparisons (``judgments_count < judgments_required``) are given a priority: the others are
no longer served. A/B tests' comparisons (``therapref abtest``) keep the priority their test gave them:
they were put at the front of the queue on purpose, and a strategy only reorders the rest.

The reward model is loaded and run only through ``reward.scoring`` (its owner); runs are found by the
caller (``reward.store.run_for_path``) and passed in by id.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from db.audit import audit
from db.crud import DataError
from db.models import Comparison, Judgment, Prompt, Response
from db.rules import prompt_conversation
from db.scores import abtest_comparison_ids, comparison_scores, save_comparison_scores, set_priorities

STRATEGIES = ("random", "uncertainty", "disagreement")
PAIR_STRATEGIES = ("random", "uncertainty")


def vote_entropy(counts: Iterable[int]) -> float:
    """Entropy in bits of a comparison's vote counts; 0 with fewer than two votes (nothing to disagree).

    >>> vote_entropy([2, 0]), vote_entropy([1, 1]), round(vote_entropy([2, 1, 1]), 3), vote_entropy([1])
    (0.0, 1.0, 1.5, 0.0)
    """
    counts = [c for c in counts if c > 0]
    total = sum(counts)
    if total < 2:
        return 0.0
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts))


def random_priority(seed: int, comparison_id: int) -> float:
    """A comparison's random priority in [0, 1): seeded per (seed, comparison), so that a comparison keeps
    its draw whatever else is in the queue.

    >>> random_priority(0, 7) == random_priority(0, 7), random_priority(0, 7) == random_priority(1, 7)
    (True, False)
    """
    return random.Random(f"{seed}:{comparison_id}").random()


def open_comparison_ids(*, session: Session) -> list[int]:
    """Comparisons still needing judgments, by id."""
    return list(session.exec(select(Comparison.id).where(Comparison.judgments_count < Comparison.judgments_required)
                             .order_by(Comparison.id)).all())


def comparison_texts(ids: Sequence[int], *, session: Session) -> dict[int, tuple[list[dict[str, str]], str, str]]:
    """{comparison_id: (conversation, reply A, reply B)} for the reward model."""
    resp_a, resp_b = aliased(Response), aliased(Response)
    out: dict[int, tuple[list[dict[str, str]], str, str]] = {}
    for start in range(0, len(ids), 500):  # bounded IN lists
        chunk = list(ids[start:start + 500])
        rows = session.exec(select(Comparison.id, Prompt, resp_a.text, resp_b.text)
                            .join(Prompt, Prompt.id == Comparison.prompt_id)
                            .join(resp_a, resp_a.id == Comparison.response_a_id)
                            .join(resp_b, resp_b.id == Comparison.response_b_id)
                            .where(Comparison.id.in_(chunk))).all()
        for cid, prompt, text_a, text_b in rows:
            out[cid] = (prompt_conversation(prompt), text_a, text_b)
    return out


def load_model(model_dir: str | Path) -> Any:
    """A reward model or ensemble folder, through its owner ``reward.scoring``."""
    from reward.scoring import load_reward_model

    return load_reward_model(model_dir)


def score_comparisons(model: Any, *, session: Session, run_id: int, rescore: bool = False, batch_size: int = 64,
                      progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """P(A better) and uncertainty for every open comparison (``reward.scoring.pair_scores``), stored as
    ComparisonScore rows of run ``run_id``; comparisons the run already scored are skipped unless
    ``rescore``."""
    from reward.scoring import pair_scores

    ids = open_comparison_ids(session=session)
    done = set(comparison_scores(run_id, session=session)) if not rescore else set()
    todo = [cid for cid in ids if cid not in done]
    counts = {"open": len(ids), "written": 0, "updated": 0, "skipped": len(ids) - len(todo)}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        texts = comparison_texts(chunk, session=session)
        scores = pair_scores(model, [texts[cid] for cid in chunk], batch_size=batch_size)
        saved = save_comparison_scores({cid: (s.p_a, s.uncertainty, s.n_members) for cid, s in
                                        zip(chunk, scores, strict=True)}, run_id=run_id, session=session)
        counts["written"] += saved["written"]
        counts["updated"] += saved["updated"]
        if progress:
            progress(len(chunk))
    return counts


def vote_counts(ids: Sequence[int], *, session: Session) -> dict[int, Counter]:
    """{comparison_id: Counter of its votes (a, b, tie, both_bad)} over every judgment made so far."""
    counts: dict[int, Counter] = defaultdict(Counter)
    for start in range(0, len(ids), 500):
        rows = session.exec(select(Judgment.comparison_id, Judgment.preferred)
                            .where(Judgment.comparison_id.in_(list(ids[start:start + 500])))).all()
        for cid, preferred in rows:
            counts[cid][preferred] += 1
    return counts


@dataclass
class PrioritySummary:
    strategy: str
    open: int = 0
    set: int = 0
    scored: int = 0
    nonzero: int = 0
    top: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        """>>> str(PrioritySummary("disagreement", open=5, set=5, nonzero=2, top=[4, 1]))
        'Set disagreement priorities on 5 open comparisons (2 above zero; first served: #4, #1).'
        """
        text = f"Set {self.strategy} priorities on {self.set:,} open comparisons"
        details = []
        if self.scored:
            details.append(f"{self.scored:,} scored now")
        if self.strategy != "random":
            details.append(f"{self.nonzero:,} above zero")
        if self.top:
            details.append("first served: " + ", ".join(f"#{cid}" for cid in self.top))
        return text + (f" ({'; '.join(details)})" if details else "") + "."


def prioritize(strategy: str, *, session: Session, seed: int = 0, run_id: int | None = None,
               model_dir: str | Path | None = None, actor: str = "cli",
               progress: Callable[[int], None] | None = None) -> PrioritySummary:
    """Set ``Comparison.priority`` of every open comparison by ``strategy`` (see the module docstring).

    ``uncertainty`` needs ``run_id`` (the reward model's run) and ``model_dir`` (loaded only when some
    open comparison lacks a stored score from that run). The caller commits.
    """
    if strategy not in STRATEGIES:
        raise DataError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if strategy == "uncertainty" and (run_id is None or model_dir is None):
        raise DataError("--strategy uncertainty needs --reward-model DIR")
    kept = abtest_comparison_ids(session=session)
    ids = [cid for cid in open_comparison_ids(session=session) if cid not in kept]
    summary = PrioritySummary(strategy=strategy, open=len(ids))
    if strategy == "random":
        priorities = {cid: random_priority(seed, cid) for cid in ids}
    elif strategy == "disagreement":
        votes = vote_counts(ids, session=session)
        priorities = {cid: vote_entropy(votes[cid].values()) for cid in ids}
    else:
        stored = comparison_scores(run_id, session=session)
        if any(cid not in stored for cid in ids):
            counts = score_comparisons(load_model(model_dir), session=session, run_id=run_id, progress=progress)
            summary.scored = counts["written"]
            stored = comparison_scores(run_id, session=session)
        priorities = {cid: stored[cid][1] for cid in ids}
    summary.set = set_priorities(priorities, session=session)
    summary.nonzero = sum(value > 0 for value in priorities.values())
    summary.top = [cid for cid, _ in sorted(priorities.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    audit(actor, "queue.prioritize", session=session, target=f"{summary.set} comparisons",
          details={"strategy": strategy, "seed": seed, "reward_model_run_id": run_id, "set": summary.set,
                   "scored": summary.scored})
    return summary


# --- New pairs under a budget ----------------------------------------------------------------------


def pair_chooser(strategy: str, budget: int, *, session: Session, seed: int = 0,
                 model_dir: str | Path | None = None) -> Callable[[list[tuple[int, int]]], list[tuple[int, int]]]:
    """A function that picks ``budget`` of the candidate response pairs ``candidates.pairing.make_pairs``
    found (all prompts together): a seeded sample (``random``) or the pairs the reward model is least
    sure about (``uncertainty``; ties by response ids)."""
    if strategy not in PAIR_STRATEGIES:
        raise DataError(f"unknown pairing strategy {strategy!r} (choose from {', '.join(PAIR_STRATEGIES)})")
    if budget < 1:
        raise DataError("--budget must be at least 1 new comparison")
    if strategy == "uncertainty" and model_dir is None:
        raise DataError("--strategy uncertainty needs --reward-model DIR")

    def choose(options: list[tuple[int, int]]) -> list[tuple[int, int]]:
        options = sorted(options)
        if len(options) <= budget:
            return options
        if strategy == "random":
            return sorted(random.Random(f"pairs:{seed}").sample(options, budget))
        from reward.scoring import pair_scores

        scores = pair_scores(load_model(model_dir), response_pair_texts(options, session=session))
        ranked = sorted(range(len(options)), key=lambda i: (-scores[i].uncertainty, options[i]))
        return sorted(options[i] for i in ranked[:budget])

    return choose


def response_pair_texts(pairs: Sequence[tuple[int, int]], *,
                        session: Session) -> list[tuple[list[dict[str, str]], str, str]]:
    """(conversation, reply a, reply b) for response-id pairs of one prompt each."""
    ids = sorted({x for pair in pairs for x in pair})
    responses: dict[int, Response] = {}
    for start in range(0, len(ids), 500):
        for response in session.exec(select(Response).where(Response.id.in_(ids[start:start + 500]))):
            responses[response.id] = response
    prompt_ids = sorted({r.prompt_id for r in responses.values()})
    prompts = {p.id: p for p in session.exec(select(Prompt).where(Prompt.id.in_(prompt_ids)))}
    conversations = {pid: prompt_conversation(p) for pid, p in prompts.items()}
    return [(conversations[responses[a].prompt_id], responses[a].text, responses[b].text) for a, b in pairs]


def pairs_by_strategy(strategy: str, budget: int, *, session: Session, seed: int = 0,
                      model_dir: str | Path | None = None, overlap: int = 1, overlap_fraction: float = 0.2,
                      candidates: list[str] | None = None, actor: str = "cli") -> Any:
    """``candidates.pairing.make_pairs`` creating exactly ``budget`` new comparisons in all (fewer only
    when fewer cross-source pairs are left), chosen by ``strategy``."""
    from candidates.pairing import make_pairs

    chooser = pair_chooser(strategy, budget, session=session, seed=seed, model_dir=model_dir)
    return make_pairs(session=session, overlap=overlap, overlap_fraction=overlap_fraction, seed=seed,
                      candidates=candidates, actor=actor, chooser=chooser)
