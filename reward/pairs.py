"""Preference pairs from judgments: pure functions, no database, no torch.

A *vote* is one judgment seen with everything needed to turn it into a pair; a *pair* is what a
reward model trains on: the conversation so far (system message included), the chosen reply and the
rejected one, an optional margin, and where it came from.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from db.rules import CLINICIAN_ROLES, Sources, majority_label, reply_length
from reward.errors import RewardError

CLINICIANS = "clinicians"
#: ``judgment``: a pair per A/B vote; ``majority``: a pair per comparison; ``adjudicated``: a lead's final
#: label replaces the clinicians' votes where there is one, the rest by majority. ``auto`` (the config's
#: default) is ``adjudicated`` when the selected data holds an adjudication, else ``judgment``.
AGGREGATIONS = ("judgment", "majority", "adjudicated")


@dataclass(frozen=True)
class Ruling:
    """A lead's final label for one comparison (``db.models.Adjudication``), as pairs use it."""

    preferred: str
    strength: int | None = None
    flags_a: tuple[str, ...] = ()
    flags_b: tuple[str, ...] = ()


@dataclass(frozen=True)
class Vote:
    """One A/B judgment with the texts it speaks of (``preferred`` uses the comparison's a/b)."""

    comparison_id: int
    prompt_key: str
    prompt: tuple[tuple[str, str], ...]
    text_a: str
    text_b: str
    preferred: str
    response_a_id: int | None = None
    response_b_id: int | None = None
    strength: int | None = None
    flags_a: tuple[str, ...] = ()
    flags_b: tuple[str, ...] = ()
    annotator: str = ""
    role: str = "clinician"
    guideline_version: int | None = None
    margin: float | None = None
    #: Per-criterion verdicts of this judgment, ((criterion, a|b|tie), …), for ``build_pairs(criterion=…)``.
    criteria: tuple[tuple[str, str], ...] = ()

    @property
    def source(self) -> str:
        """``clinicians`` for people, the annotator name (``import:<dataset>``) for imported data."""
        return CLINICIANS if self.role in CLINICIAN_ROLES else self.annotator


@dataclass(frozen=True)
class PreferencePair:
    """(prompt, chosen, rejected) as TRL's conversational preference format understands it."""

    prompt: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str
    prompt_key: str
    margin: float = 0.0
    source: str = CLINICIANS
    comparison_id: int | None = None
    chosen_id: int | None = None
    rejected_id: int | None = None

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.prompt]

    def to_trl(self) -> dict[str, Any]:
        """The TRL conversational record (explicit prompt)."""
        return {"prompt": self.messages, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}], "margin": self.margin}


@dataclass
class PairStats:
    """What happened to every vote on its way to becoming (or not becoming) a pair."""

    votes: int = 0
    pairs: int = 0
    ties: int = 0
    both_bad: int = 0
    unsafe_chosen: int = 0
    filtered_source: int = 0
    filtered_guideline: int = 0
    no_majority: int = 0
    comparisons: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    no_criterion_verdict: int = 0
    #: The aggregation used (``auto`` resolved) and the comparisons whose pair came from an adjudication.
    aggregation: str = ""
    adjudicated: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def messages_key(messages: Iterable[Mapping[str, str]]) -> tuple[tuple[str, str], ...]:
    """Freeze chat messages into a hashable tuple.

    >>> messages_key([{"role": "user", "content": "hi"}])
    (('user', 'hi'),)
    """
    return tuple((str(m["role"]), str(m["content"])) for m in messages)


def parse_margin_mapping(spec: str | Mapping[Any, Any] | None) -> dict[int, float] | None:
    """Read a strength→margin mapping; ``None``/``"off"`` turns margins off (the default).

    >>> parse_margin_mapping("1:0,2:0.5,3:1")
    {1: 0.0, 2: 0.5, 3: 1.0}
    >>> parse_margin_mapping("linear")
    {1: 0.0, 2: 0.5, 3: 1.0}
    >>> parse_margin_mapping({"3": 2}) is None, parse_margin_mapping("off")
    (False, None)
    >>> parse_margin_mapping("2=x")
    Traceback (most recent call last):
    ...
    reward.errors.RewardError: margin mapping '2=x': expected STRENGTH:MARGIN items such as 1:0,2:0.5,3:1
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "off", "none", "false")):
        return None
    if isinstance(spec, str) and spec.strip().lower() == "linear":
        return {1: 0.0, 2: 0.5, 3: 1.0}
    items = spec.items() if isinstance(spec, Mapping) else (
        part.split(":", 1) if ":" in part else (part, None) for part in spec.split(","))
    mapping: dict[int, float] = {}
    try:
        for key, value in items:
            strength = int(str(key).strip())
            if strength not in (1, 2, 3) or value is None:
                raise ValueError
            mapping[strength] = float(str(value).strip())
    except ValueError:
        raise RewardError(f"margin mapping {spec!r}: expected STRENGTH:MARGIN items such as 1:0,2:0.5,3:1") from None
    return mapping


def margin_for(strength: int | None, mapping: Mapping[int, float] | None) -> float:
    """TRL's ``margin`` for one vote: 0 when margins are off or the strength is unknown.

    >>> margin_for(3, {1: 0.0, 2: 0.5, 3: 1.0}), margin_for(None, {3: 1.0}), margin_for(3, None)
    (1.0, 0.0, 0.0)
    """
    if mapping is None or strength is None:
        return 0.0
    return float(mapping.get(int(strength), 0.0))


def unsafe_responses(votes: Iterable[Vote], rulings: Mapping[int, Ruling] | None = None) -> set[Any]:
    """Replies that any clinician flagged (any safety flag) in any judgment: never ``chosen``. On a
    comparison with a ruling (``rulings``, by comparison id) the ruling's flags replace the votes' flags.

    A reply is identified by its response id, or by its text when it has none (files).

    >>> v = Vote(1, "p", (), "x", "y", "a", 10, 11, flags_a=("harmful_advice",))
    >>> sorted(unsafe_responses([v]))
    [10]
    >>> unsafe_responses([Vote(1, "p", (), "x", "y", "a", 10, 11, flags_a=("toxic",), role="source")])
    set()
    >>> sorted(unsafe_responses([v], {1: Ruling("a", flags_b=("toxic",))}))
    [11]
    """
    rulings = rulings or {}
    flagged: set[Any] = set()
    for vote in votes:
        if vote.role not in CLINICIAN_ROLES:
            continue
        ruling = rulings.get(vote.comparison_id) if vote.comparison_id is not None else None
        flags_a, flags_b = (ruling.flags_a, ruling.flags_b) if ruling else (vote.flags_a, vote.flags_b)
        if flags_a:
            flagged.add(_reply_id(vote.response_a_id, vote.text_a))
        if flags_b:
            flagged.add(_reply_id(vote.response_b_id, vote.text_b))
    return flagged


def _reply_id(response_id: int | None, text: str) -> Any:
    return response_id if response_id is not None else ("text", text)


def _pair(vote: Vote, winner: str, margin: float) -> PreferencePair:
    if winner == "a":
        chosen, rejected, cid, rid = vote.text_a, vote.text_b, vote.response_a_id, vote.response_b_id
    else:
        chosen, rejected, cid, rid = vote.text_b, vote.text_a, vote.response_b_id, vote.response_a_id
    return PreferencePair(prompt=vote.prompt, chosen=chosen, rejected=rejected, prompt_key=vote.prompt_key,
                          margin=margin, source=vote.source, comparison_id=vote.comparison_id,
                          chosen_id=cid, rejected_id=rid)


def _vote_margin(vote: Vote, mapping: Mapping[int, float] | None) -> float:
    if mapping is None:
        return 0.0
    if vote.margin is not None:  # imported files may carry their own margin
        return float(vote.margin)
    return margin_for(vote.strength, mapping)


def criterion_votes(votes: Iterable[Vote], criterion: str) -> tuple[list[Vote], int]:
    """The votes as one criterion's verdicts: each vote's ``preferred`` becomes its verdict on
    ``criterion`` (a, b or tie) and its strength and margin are dropped (they grade the overall
    preference, not the criterion); votes without a verdict on it are left out and counted.

    >>> v = [Vote(1, "p", (), "x", "y", "a", 1, 2, strength=3, criteria=(("safety", "b"),)),
    ...      Vote(2, "p", (), "x", "y", "a", 3, 4, criteria=(("empathy", "a"),))]
    >>> kept, missing = criterion_votes(v, "safety")
    >>> [(k.preferred, k.strength) for k in kept], missing
    ([('b', None)], 1)
    """
    kept, missing = [], 0
    for vote in votes:
        verdict = dict(vote.criteria).get(criterion)
        if verdict is None:
            missing += 1
        else:
            kept.append(replace(vote, preferred=verdict, strength=None, margin=None))
    return kept, missing


def build_pairs(
    votes: Iterable[Vote],
    *,
    aggregation: str = "judgment",
    margin_mapping: Mapping[int, float] | None = None,
    sources: str | Sequence[str] | Sources = "both",
    guideline_versions: Sequence[int] | None = None,
    criterion: str | None = None,
    rulings: Mapping[int, Ruling] | None = None,
) -> tuple[list[PreferencePair], PairStats]:
    """Turn votes into preference pairs.

    - ``tie`` and ``both_bad`` are counted, never paired;
    - a reply any clinician flagged is never ``chosen`` (such votes are dropped and counted);
    - ``aggregation="judgment"``: one pair per A/B vote; ``"majority"``: one pair per comparison
      whose winner has strictly more votes than any other answer (tie/both_bad included), with the
      mean margin of the winning votes;
    - ``sources`` (``db.rules.Sources``) and ``guideline_versions`` filter votes before anything else;
    - ``criterion``: pairs from that criterion's verdicts instead of the overall preference
      (``criterion_votes``; votes without a verdict on it are counted as ``no_criterion_verdict``); the
      safety rule above still holds, flags being read from every vote;
    - ``aggregation="adjudicated"``: on a comparison with a lead's ruling (``rulings``, by comparison id;
      only while clinicians' votes are selected) the ruling replaces the votes: one pair when it prefers A
      or B (margin from its strength), none for tie / both bad, and its flags replace the votes' flags;
      every other comparison by majority.

    >>> p = (("user", "I feel low"),)
    >>> votes = [Vote(1, "p1", p, "long kind reply", "ok", "a", 1, 2, strength=3),
    ...          Vote(1, "p1", p, "long kind reply", "ok", "a", 1, 2, strength=1, annotator="c2"),
    ...          Vote(1, "p1", p, "long kind reply", "ok", "b", 1, 2, annotator="c3"),
    ...          Vote(2, "p2", p, "x", "y", "tie", 3, 4), Vote(3, "p3", p, "x", "y", "both_bad", 5, 6)]
    >>> pairs, stats = build_pairs(votes)
    >>> [(q.chosen, q.rejected) for q in pairs], stats.ties, stats.both_bad
    ([('long kind reply', 'ok'), ('long kind reply', 'ok'), ('ok', 'long kind reply')], 1, 1)
    >>> pairs, stats = build_pairs(votes, aggregation="majority", margin_mapping={1: 0.0, 3: 1.0})
    >>> [(q.chosen, q.margin) for q in pairs], stats.no_majority
    ([('long kind reply', 0.5)], 2)
    >>> pairs, stats = build_pairs(votes, aggregation="adjudicated", rulings={1: Ruling("b", strength=3)})
    >>> [(q.chosen, q.comparison_id) for q in pairs], stats.adjudicated
    ([('ok', 1)], 1)
    """
    if aggregation not in AGGREGATIONS:
        raise RewardError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, not {aggregation!r}")
    wanted = Sources.parse(sources)
    votes = list(votes)
    stats = PairStats(aggregation=aggregation)
    applied = dict(rulings or {}) if aggregation == "adjudicated" and wanted.clinicians else {}
    unsafe = unsafe_responses(votes, applied)
    if criterion is not None:
        votes, stats.no_criterion_verdict = criterion_votes(votes, criterion)
        stats.votes += stats.no_criterion_verdict
    kept: list[Vote] = []
    for vote in votes:
        stats.votes += 1
        if not wanted.includes(vote.role, vote.annotator):
            stats.filtered_source += 1
        elif guideline_versions is not None and vote.guideline_version not in guideline_versions:
            stats.filtered_guideline += 1
        else:
            kept.append(vote)
    pairs: list[PreferencePair] = []
    if applied:
        ruled = [v for v in kept if v.comparison_id in applied]
        kept = [v for v in kept if v.comparison_id not in applied]
        pairs.extend(_ruled_pairs(ruled, applied, margin_mapping, stats))
    if aggregation == "judgment":
        for vote in kept:
            if vote.preferred == "tie":
                stats.ties += 1
            elif vote.preferred == "both_bad":
                stats.both_bad += 1
            else:
                pairs.append(_pair(vote, vote.preferred, _vote_margin(vote, margin_mapping)))
    else:
        by_comparison: dict[Any, list[Vote]] = defaultdict(list)
        for vote in kept:
            by_comparison[(vote.source if vote.comparison_id is None else None, vote.comparison_id,
                           vote.prompt_key if vote.comparison_id is None else None)].append(vote)
        for group in by_comparison.values():
            counts = Counter(v.preferred for v in group)
            stats.ties += counts["tie"]
            stats.both_bad += counts["both_bad"]
            top = majority_label(v.preferred for v in group)
            if top not in ("a", "b"):  # a split vote, or a tie / both_bad majority: nothing to learn
                stats.no_majority += 1
                continue
            winners = [v for v in group if v.preferred == top]
            margin = sum(_vote_margin(v, margin_mapping) for v in winners) / len(winners)
            pairs.append(_pair(winners[0], top, margin))
    stats.comparisons = len({v.comparison_id for v in kept}) + stats.adjudicated
    safe = []
    for pair in pairs:
        if _reply_id(pair.chosen_id, pair.chosen) in unsafe:
            stats.unsafe_chosen += 1
        else:
            safe.append(pair)
    stats.pairs = len(safe)
    stats.by_source = dict(Counter(p.source for p in safe))
    return safe, stats


def _ruled_pairs(ruled: Sequence[Vote], rulings: Mapping[int, Ruling], margin_mapping: Mapping[int, float] | None,
                 stats: PairStats) -> list[PreferencePair]:
    """One pair per adjudicated comparison that prefers A or B (its votes only carry the texts)."""
    first: dict[int, Vote] = {}
    for vote in ruled:
        first.setdefault(vote.comparison_id, vote)
    pairs = []
    for comparison_id, vote in first.items():
        ruling = rulings[comparison_id]
        stats.adjudicated += 1
        if ruling.preferred == "tie":
            stats.ties += 1
        elif ruling.preferred == "both_bad":
            stats.both_bad += 1
        else:
            pairs.append(replace(_pair(vote, ruling.preferred, margin_for(ruling.strength, margin_mapping)),
                                 source=CLINICIANS))
    return pairs


def split_by_prompt(
    pairs: Sequence[PreferencePair], *, eval_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Split pairs so that no prompt is on both sides; the same seed gives the same split.

    At least one prompt stays on each side when ``eval_fraction`` > 0 and there are two prompts.

    >>> ps = [PreferencePair((), f"c{i}", "r", prompt_key=f"p{i % 5}") for i in range(20)]
    >>> train, held = split_by_prompt(ps, eval_fraction=0.2, seed=1)
    >>> len(train), len(held), {p.prompt_key for p in train} & {p.prompt_key for p in held}
    (16, 4, set())
    >>> split_by_prompt(ps, eval_fraction=0.2, seed=1) == (train, held)
    True
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise RewardError(f"eval fraction must be in [0, 1), not {eval_fraction}")
    keys = sorted({p.prompt_key for p in pairs})
    random.Random(seed).shuffle(keys)
    n_eval = round(eval_fraction * len(keys))
    if eval_fraction > 0 and len(keys) >= 2:
        n_eval = min(max(n_eval, 1), len(keys) - 1)
    held = set(keys[:n_eval])
    return [p for p in pairs if p.prompt_key not in held], [p for p in pairs if p.prompt_key in held]


def cap_pairs_per_prompt(pairs: Sequence[PreferencePair], *, cap: int, seed: int) -> list[PreferencePair]:
    """Keep at most ``cap`` pairs per prompt (seeded), so that no long thread dominates a score.

    >>> ps = [PreferencePair((), f"c{i}", "r", prompt_key="p") for i in range(9)]
    >>> len(cap_pairs_per_prompt(ps, cap=5, seed=0))
    5
    """
    grouped: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in pairs:
        grouped[pair.prompt_key].append(pair)
    rng = random.Random(seed)
    kept: list[PreferencePair] = []
    for key in sorted(grouped):
        group = grouped[key]
        kept.extend(group if len(group) <= cap else rng.sample(group, cap))
    return kept


def log_length_gap(pair: PreferencePair) -> float:
    """log(1+words(chosen)) − log(1+words(rejected)), the length feature of a pair.

    >>> round(log_length_gap(PreferencePair((), "a b c", "a", "p")), 3)
    0.693
    """
    return math.log1p(reply_length(pair.chosen)) - math.log1p(reply_length(pair.rejected))
