"""``make_pairs``: comparisons between replies to the same prompt from different candidate sources.

- Every cross-source pair of a prompt's responses (replies of one source are never paired with each
  other), or at most ``budget`` comparisons per prompt, chosen so that model pairs are covered evenly
  across prompts (least-used model pair first; ties broken by a seeded shuffle).
- ``overlap`` > 1 sets ``judgments_required`` on a seeded ``overlap_fraction`` of the *new*
  comparisons so that several clinicians judge them (agreement measurement).
- Idempotent: existing comparisons count towards the budget and are never changed; a re-run with
  nothing new adds nothing.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlmodel import Session, select

from db.audit import audit
from db.crud import DataError, add_comparison
from db.models import CandidateModel, Comparison, Response


@dataclass
class PairingSummary:
    prompts: int = 0
    created: int = 0
    existing: int = 0
    overlap: int = 0
    overlap_required: int = 1
    skipped_prompts: int = 0

    def __str__(self) -> str:
        """>>> str(PairingSummary(prompts=3, created=6, overlap=1, overlap_required=3))
        'Created 6 comparisons over 3 prompts (0 already existed); 1 need 3 judgments each.'
        """
        text = f"Created {self.created:,} comparisons over {self.prompts:,} prompts ({self.existing:,} already existed)"
        if self.overlap:
            text += f"; {self.overlap:,} need {self.overlap_required} judgments each"
        if self.skipped_prompts:
            text += f"; {self.skipped_prompts:,} prompts have replies from fewer than two sources"
        return text + "."


def overlap_count(n: int, fraction: float) -> int:
    """How many of ``n`` new comparisons get the overlap requirement (rounded half up, at least one
    when the fraction is positive and there is anything to choose).

    >>> overlap_count(10, 0.2), overlap_count(4, 0.2), overlap_count(0, 0.5), overlap_count(5, 0.0)
    (2, 1, 0, 0)
    """
    if n == 0 or fraction <= 0:
        return 0
    return min(n, max(1, int(n * fraction + 0.5)))


def choose_pairs(candidates: list[tuple[int, int, str, str]], *, budget: int | None, usage: Counter,
                 rng: random.Random) -> list[tuple[int, int]]:
    """Pick up to ``budget`` response pairs, least-used model pair first (``usage`` is updated).

    ``candidates`` rows are ``(response_a, response_b, source_a, source_b)``.

    >>> rows = [(1, 2, "x", "y"), (1, 3, "x", "z"), (2, 3, "y", "z")]
    >>> usage = Counter({("x", "y"): 5, ("x", "z"): 5})
    >>> choose_pairs(rows, budget=1, usage=usage, rng=random.Random(0))
    [(2, 3)]
    """
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    chosen: list[tuple[int, int]] = []
    while shuffled and (budget is None or len(chosen) < budget):
        best = min(range(len(shuffled)), key=lambda i: usage[tuple(sorted(shuffled[i][2:]))])
        a, b, sa, sb = shuffled.pop(best)
        usage[tuple(sorted((sa, sb)))] += 1
        chosen.append((a, b))
    return chosen


def replies_by_prompt(*, session: Session, candidates: Sequence[str] | None = None,
                      prompt_ids: Sequence[int] | None = None) -> dict[int, list[tuple[int, str]]]:
    """Each prompt's replies as (response id, candidate name), in id order; only ``candidates``'
    (all must exist) and ``prompt_ids``' when given."""
    query = (select(Response.id, Response.prompt_id, CandidateModel.name)
             .join(CandidateModel, CandidateModel.id == Response.candidate_model_id)
             .order_by(Response.prompt_id, Response.id))
    if candidates:
        known = set(session.exec(select(CandidateModel.name).where(CandidateModel.name.in_(candidates))).all())
        unknown = [c for c in candidates if c not in known]
        if unknown:
            raise DataError(f"unknown candidate(s): {', '.join(unknown)}")
        query = query.where(CandidateModel.name.in_(candidates))
    if prompt_ids is not None:
        query = query.where(Response.prompt_id.in_(prompt_ids))
    by_prompt: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for response_id, prompt_id, source in session.exec(query).all():
        by_prompt[prompt_id].append((response_id, source))
    return by_prompt


def make_pairs(*, session: Session, overlap: int = 1, overlap_fraction: float = 0.2, budget: int | None = None,
               seed: int = 0, prompt_ids: list[int] | None = None, candidates: list[str] | None = None,
               actor: str = "cli",
               chooser: Callable[[list[tuple[int, int]]], list[tuple[int, int]]] | None = None) -> PairingSummary:
    """Create the missing comparisons (the caller commits). See the module docstring.

    ``chooser`` (active selection, ``candidates.priority.pair_chooser``) picks which of the new pairs,
    over all prompts, are created; the overlap share is then drawn among those."""
    if overlap < 1:
        raise DataError("overlap must be at least 1 (judgments per comparison)")
    if not 0.0 <= overlap_fraction <= 1.0:
        raise DataError("overlap fraction must be between 0 and 1")
    if budget is not None and budget < 1:
        raise DataError("budget must be at least 1 comparison per prompt")
    by_prompt = replies_by_prompt(session=session, candidates=candidates, prompt_ids=prompt_ids)
    existing_rows = session.exec(select(Comparison.prompt_id, Comparison.response_a_id, Comparison.response_b_id)
                                 .where(Comparison.prompt_id.in_(list(by_prompt)))).all() if by_prompt else []
    existing: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for prompt_id, a, b in existing_rows:
        existing[prompt_id].add((a, b))
    summary = PairingSummary(overlap_required=overlap)
    usage: Counter = Counter()
    source_of = {rid: src for rows in by_prompt.values() for rid, src in rows}
    for pairs in existing.values():
        for a, b in pairs:
            if a in source_of and b in source_of:
                usage[tuple(sorted((source_of[a], source_of[b])))] += 1
    new_pairs: list[tuple[int, int]] = []
    for prompt_id in sorted(by_prompt):
        rows = by_prompt[prompt_id]
        if len({src for _, src in rows}) < 2:
            summary.skipped_prompts += 1
            continue
        summary.prompts += 1
        have = existing[prompt_id]
        summary.existing += len(have)
        options = [(min(a, b), max(a, b), sa, sb) for (a, sa), (b, sb) in itertools.combinations(rows, 2)
                   if sa != sb and (min(a, b), max(a, b)) not in have]
        room = None if budget is None else max(0, budget - len(have))
        new_pairs.extend(choose_pairs(options, budget=room, usage=usage, rng=random.Random(f"{seed}:{prompt_id}")))
    if chooser is not None:
        new_pairs = chooser(new_pairs)
    responses = {r.id: r for r in session.exec(select(Response).where(
        Response.id.in_({x for pair in new_pairs for x in pair})))} if new_pairs else {}
    chosen = set()
    if overlap > 1:
        k = overlap_count(len(new_pairs), overlap_fraction)
        chosen = set(random.Random(f"overlap:{seed}").sample(range(len(new_pairs)), k))
    for index, (a, b) in enumerate(new_pairs):
        required = overlap if index in chosen else 1
        _, created = add_comparison(responses[a], responses[b], session=session, judgments_required=required)
        if created:
            summary.created += 1
            summary.overlap += int(required > 1)
    if summary.created:
        audit(actor, "pairs.make", session=session, target=f"{summary.created} comparisons",
              details={"overlap": overlap, "overlap_fraction": overlap_fraction, "budget": budget, "seed": seed,
                       "created": summary.created, "overlap_comparisons": summary.overlap})
    return summary


# --- Ranking tasks of K replies (``therapref pairs --k K``) ---------------------------------------


@dataclass
class RankingSummary:
    k: int
    prompts: int = 0
    created: int = 0
    existing: int = 0
    overlap: int = 0
    overlap_required: int = 1
    skipped_prompts: int = 0

    def __str__(self) -> str:
        """>>> str(RankingSummary(k=3, prompts=2, created=2, skipped_prompts=1))
        'Created 2 ranking tasks of 3 replies over 2 prompts (0 already existed); 1 prompts have replies from fewer than 3 sources.'
        """  # noqa: E501
        text = (f"Created {self.created:,} ranking tasks of {self.k} replies over {self.prompts:,} prompts "
                f"({self.existing:,} already existed)")
        if self.overlap:
            text += f"; {self.overlap:,} need {self.overlap_required} rankings each"
        if self.skipped_prompts:
            text += f"; {self.skipped_prompts:,} prompts have replies from fewer than {self.k} sources"
        return text + "."


def choose_ranking_sets(rows: list[tuple[int, str]], k: int, *, count: int, have: set[str], usage: Counter,
                        rng: random.Random) -> list[tuple[int, ...]]:
    """Pick up to ``count`` new sets of ``k`` replies from ``k`` distinct sources (``rows`` are
    ``(response_id, source)``), least-used sources first (``usage`` is updated); ``have`` holds the
    keys (``db.rankings.response_key``) of existing sets, never chosen again.

    >>> rows = [(1, "x"), (2, "y"), (3, "z"), (4, "w")]
    >>> choose_ranking_sets(rows, 3, count=1, have=set(), usage=Counter({"w": 2}), rng=random.Random(0))
    [(1, 2, 3)]
    >>> choose_ranking_sets(rows[:3], 3, count=2, have={"1,2,3"}, usage=Counter(), rng=random.Random(0))
    []
    """
    from db.rankings import response_key

    by_source: dict[str, list[int]] = defaultdict(list)
    for response_id, source in rows:
        by_source[source].append(response_id)
    combos = list(itertools.combinations(sorted(by_source), k))
    rng.shuffle(combos)
    chosen: list[tuple[int, ...]] = []
    while combos and len(chosen) < count:
        best = min(range(len(combos)), key=lambda i: sum(usage[s] for s in combos[i]))
        sources = combos.pop(best)
        options = list(itertools.product(*(by_source[s] for s in sources)))
        rng.shuffle(options)
        pick = next((tuple(sorted(o)) for o in options if response_key(o) not in have), None)
        if pick is None:
            continue
        have.add(response_key(pick))
        usage.update(sources)
        chosen.append(pick)
    return chosen


def make_ranking_tasks(k: int, *, session: Session, overlap: int = 1, overlap_fraction: float = 0.2,
                       budget: int | None = None, seed: int = 0, prompt_ids: list[int] | None = None,
                       candidates: list[str] | None = None, actor: str = "cli") -> RankingSummary:
    """Ranking tasks of ``k`` replies from ``k`` distinct sources, ``budget`` per prompt (default 1),
    for prompts that have replies from at least ``k`` sources; ``overlap`` rankings required on a
    seeded ``overlap_fraction`` of the new tasks. Idempotent like ``make_pairs`` (the caller commits)."""
    from db.models import RankingTask
    from db.rankings import MAX_K, MIN_K, add_ranking_task

    if not MIN_K <= k <= MAX_K:
        raise DataError(f"--k must be between {MIN_K} and {MAX_K} replies per ranking (without --k: pairs)")
    if overlap < 1:
        raise DataError("overlap must be at least 1 (rankings per task)")
    if not 0.0 <= overlap_fraction <= 1.0:
        raise DataError("overlap fraction must be between 0 and 1")
    if budget is not None and budget < 1:
        raise DataError("budget must be at least 1 ranking task per prompt")
    by_prompt = replies_by_prompt(session=session, candidates=candidates, prompt_ids=prompt_ids)
    have: dict[int, set[str]] = defaultdict(set)
    for prompt_id, key in (session.exec(select(RankingTask.prompt_id, RankingTask.response_key)
                                        .where(RankingTask.prompt_id.in_(list(by_prompt)))).all() if by_prompt else []):
        if key.count(",") == k - 1:
            have[prompt_id].add(key)
    summary, usage, new_sets = RankingSummary(k=k, overlap_required=overlap), Counter(), []
    for prompt_id in sorted(by_prompt):
        rows = by_prompt[prompt_id]
        if len({src for _, src in rows}) < k:
            summary.skipped_prompts += 1
            continue
        summary.prompts += 1
        summary.existing += len(have[prompt_id])
        room = max(0, (budget or 1) - len(have[prompt_id]))
        new_sets.extend(choose_ranking_sets(rows, k, count=room, have=have[prompt_id], usage=usage,
                                            rng=random.Random(f"{seed}:rank{k}:{prompt_id}")))
    responses = {r.id: r for r in session.exec(select(Response).where(
        Response.id.in_({x for ids in new_sets for x in ids})))} if new_sets else {}
    chosen = set()
    if overlap > 1:
        chosen = set(random.Random(f"overlap:{seed}:rank{k}").sample(
            range(len(new_sets)), overlap_count(len(new_sets), overlap_fraction)))
    for index, ids in enumerate(new_sets):
        required = overlap if index in chosen else 1
        _, created = add_ranking_task([responses[i] for i in ids], session=session, judgments_required=required)
        summary.created += int(created)
        summary.overlap += int(created and required > 1)
    if summary.created:
        audit(actor, "rankings.make", session=session, target=f"{summary.created} ranking tasks",
              details={"k": k, "overlap": overlap, "overlap_fraction": overlap_fraction, "budget": budget,
                       "seed": seed, "created": summary.created, "overlap_tasks": summary.overlap})
    return summary
