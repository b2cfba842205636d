"""Head-to-head of two candidates (an A/B test: a new policy against its base) over the comparisons
between their replies.

How each outcome counts, from the new candidate's side:

- **win / loss**: the judge preferred the new / the base reply;
- **tie**: half a win for each side;
- **both_bad**: counted as a tie in the win rate (half a win: neither reply was acceptable, so
  neither side gained) and reported separately, since a rising both-bad share is a warning of its
  own.

Figures (``HeadToHead``):

- win rate = (wins + ½·ties + ½·both_bad) / n judgments, with a 95% Wilson score interval on
  n judgments (a tie is half a success; with overlap > 1 the judgments of one comparison are
  correlated, so this interval is then somewhat narrow);
- the Bradley–Terry difference β_new − β_base in logits (the same penalised logistic fit as
  ``analytics.bradley_terry``; with two players it is the log-odds of the win rate), with a 95%
  interval from a bootstrap that resamples comparisons (so overlap is accounted for);
- the length-controlled win rate: a logistic regression of the outcome on the normalised length
  difference in words (``db.rules.reply_length``; (new − base) / (new + base), the leaderboard's
  feature), read at zero difference: σ(intercept), with the same bootstrap interval;
- safety flags per side: the share of judgments that flagged the new (base) reply, Wilson 95%;
- mean reply length per side in words, over the comparisons, and a warning when the longer side's
  mean is more than 30% above the shorter's (``LENGTH_WARNING``): then the raw win rate says as much
  about length (often: generation settings such as ``max_tokens``) as about the model, and the
  length-controlled rate, printed beside it, is the one to read.

``head_to_head`` loads clinicians' (or other sources') judgments; ``head_to_head_from_scores`` judges
the same comparisons by a reward model instead (a proxy: P(new better) = σ(score_new − score_base)).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from analytics.bradley_terry import cluster_weights, design_matrix, fit_logistic
from analytics.errors import AnalyticsError
from analytics.leaderboard import normalized_length_difference
from analytics.render import Paragraph, Section, Table
from analytics.stats import Estimate, percentile_interval
from db.models import AbTest, Annotator, CandidateModel, Comparison, Judgment, Prompt, Response
from db.rules import CLINICIANS, Sources, prompt_conversation, reply_length

OUTCOMES = ("win", "loss", "tie", "both_bad")
POINTS = {"win": 1.0, "loss": 0.0, "tie": 0.5, "both_bad": 0.5}
Z95 = 1.959963984540054
# A small ridge keeps an unbeaten side finite without visibly moving the estimate (see the module doc).
RIDGE = 0.01
# Mean reply lengths (words) further apart than this ratio - 1 earn the table a warning: a length gap
# that size moves clinicians' preferences on its own (the length-controlled rate is then the one to read).
LENGTH_WARNING = 0.30


def length_gap(mean_new: float, mean_base: float) -> float:
    """How much longer the longer side's mean reply is than the shorter's (0.3 = 30% longer); inf
    when one side's replies have no words at all, nan when neither has any.

    >>> round(length_gap(199, 65), 2), round(length_gap(65, 199), 2), length_gap(40, 40)
    (2.06, 2.06, 0.0)
    """
    low, high = sorted((float(mean_new), float(mean_base)))
    if not (math.isfinite(low) and math.isfinite(high)) or high <= 0:
        return math.nan
    return math.inf if low <= 0 else high / low - 1.0


def length_warning(mean_new: float, mean_base: float, *, threshold: float = LENGTH_WARNING) -> str:
    """The warning line for mean lengths more than ``threshold`` apart, else "".

    >>> print(length_warning(199, 65))
    warning: new's replies average 199 words, base's 65 (new's 206% longer): the raw win rate measures length as \
much as the model; read the length-controlled win rate, and check that both sides were generated with the same settings
    >>> length_warning(50, 60)
    ''
    """
    gap = length_gap(mean_new, mean_base)
    if not gap > threshold:  # nan (no replies) never warns
        return ""
    longer = "new's" if mean_new > mean_base else "base's"
    how = "far" if math.isinf(gap) else f"{gap:.0%}"
    return (f"warning: new's replies average {mean_new:.0f} words, base's {mean_base:.0f} ({longer} {how} longer): "
            "the raw win rate measures length as much as the model; read the length-controlled win rate, and check "
            "that both sides were generated with the same settings")


@dataclass(frozen=True)
class Outcome:
    """One judgment (or one reward-model verdict) of a comparison, from the new candidate's side."""

    comparison_id: int
    result: str
    len_new: int = 0
    len_base: int = 0
    flags_new: tuple[str, ...] = ()
    flags_base: tuple[str, ...] = ()
    prompt_id: int = 0


def outcome_of(preferred: str, new_side: str) -> str:
    """A judgment's ``preferred`` (the comparison's own a/b) as seen from the new candidate's side.

    >>> outcome_of("a", "a"), outcome_of("a", "b"), outcome_of("tie", "b"), outcome_of("both_bad", "a")
    ('win', 'loss', 'tie', 'both_bad')
    """
    if preferred in ("tie", "both_bad"):
        return preferred
    return "win" if preferred == new_side else "loss"


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a share of ``n`` trials; ``successes`` may be fractional (a tie is
    half a success).

    >>> [round(x, 4) for x in wilson(8, 12)]
    [0.3906, 0.8619]
    >>> wilson(0, 0)
    (nan, nan)
    """
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def share(successes: float, n: int) -> Estimate:
    """A share with its Wilson interval.

    >>> share(8, 12).fmt(3)
    '0.667 [0.391, 0.862] (n=12)'
    """
    if n <= 0:
        return Estimate(math.nan, n_items=0)
    low, high = wilson(successes, n)
    return Estimate(successes / n, low, high, n)


def _sigmoid(x: np.ndarray | float) -> Any:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def bt_difference(scores: np.ndarray, weights: np.ndarray, *, ridge: float = RIDGE) -> np.ndarray:
    """β_new − β_base of a two-player Bradley–Terry fit, one per row of ``weights`` (``B × n``
    judgments; ``scores`` are the new side's points 1 / ½ / 0).

    >>> d = bt_difference(np.array([1.0] * 8 + [0.0] * 4), np.ones((1, 12)), ridge=1e-8)
    >>> round(float(d[0]), 4), round(math.log(2), 4)
    (0.6931, 0.6931)
    """
    n = len(scores)
    x = design_matrix(np.zeros(n, dtype=int), np.ones(n, dtype=int), 2)
    theta = fit_logistic(x, weights, weights * scores[None, :], ridge=ridge)
    return theta[:, 0] - theta[:, 1]


def length_controlled(scores: np.ndarray, length_diff: np.ndarray, weights: np.ndarray, *,
                      ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """(win rate at zero length difference, length coefficient) per row of ``weights``: logistic
    regression of the points on an intercept and the normalised length difference.

    >>> scores = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    >>> rate, coef = length_controlled(scores, np.zeros(6), np.ones((1, 6)), ridge=1e-8)
    >>> round(float(rate[0]), 4), round(float(coef[0]), 4)
    (0.6667, 0.0)
    """
    x = np.column_stack([np.ones(len(scores)), length_diff])
    theta = fit_logistic(x, weights, weights * scores[None, :], ridge=ridge)
    return _sigmoid(theta[:, 0]), theta[:, 1]


@dataclass
class HeadToHead:
    """The head-to-head of ``new`` against ``base``; see the module docstring for every figure."""

    new: str
    base: str
    judged_by: str
    n: int = 0
    comparisons: int = 0
    prompts: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0
    win_rate: Estimate = field(default_factory=lambda: Estimate(math.nan))
    bt_diff: Estimate = field(default_factory=lambda: Estimate(math.nan))
    length_controlled: Estimate = field(default_factory=lambda: Estimate(math.nan))
    length_coef: float = math.nan
    flags_new: Estimate = field(default_factory=lambda: Estimate(math.nan))
    flags_base: Estimate = field(default_factory=lambda: Estimate(math.nan))
    flag_counts_new: dict[str, int] = field(default_factory=dict)
    flag_counts_base: dict[str, int] = field(default_factory=dict)
    mean_p_new: float | None = None
    note: str = ""
    # Mean words per reply on each side, over the comparisons (judged or not, when read from the database).
    mean_len_new: float = math.nan
    mean_len_base: float = math.nan

    @property
    def length_warning(self) -> str:
        """The warning line when the two sides' mean lengths differ by more than ``LENGTH_WARNING``."""
        return length_warning(self.mean_len_new, self.mean_len_base)

    @property
    def bt_elo(self) -> float:
        """The Bradley–Terry difference in Elo-like points (400 per factor of 10 in odds)."""
        return 400.0 / math.log(10) * self.bt_diff.value if math.isfinite(self.bt_diff.value) else math.nan

    def rows(self) -> list[list[str]]:
        """The table every surface prints (report, dashboard, CLI): measure, value.

        >>> h = summarise([Outcome(1, "win"), Outcome(2, "tie")], new="n", base="b", n_bootstrap=0)
        >>> h.rows()[:2]
        [['judgments (comparisons, prompts)', '2 (2, 1)'], ['new wins / losses / ties / both bad', '1 / 0 / 1 / 0']]
        """
        def est(e: Estimate, digits: int = 3) -> str:
            return e.fmt(digits)

        flags = ", ".join(f"{k} {v}" for k, v in sorted(self.flag_counts_new.items())) or "none"
        flags_b = ", ".join(f"{k} {v}" for k, v in sorted(self.flag_counts_base.items())) or "none"
        lengths = ("n/a" if not (math.isfinite(self.mean_len_new) and math.isfinite(self.mean_len_base))
                   else f"{self.mean_len_new:.0f} / {self.mean_len_base:.0f}")
        # The length-controlled rate sits right under the raw one: read together, they show how much of a
        # win is length (the issue that a win can measure max_tokens rather than the model).
        rows = [
            ["judgments (comparisons, prompts)", f"{self.n} ({self.comparisons}, {self.prompts})"],
            ["new wins / losses / ties / both bad", f"{self.wins} / {self.losses} / {self.ties} / {self.both_bad}"],
            ["win rate of new (ties and both bad = ½) [95% CI]", est(self.win_rate)],
            ["length-controlled win rate (at equal length) [95% CI]", est(self.length_controlled)],
            ["mean reply length, words: new / base", lengths],
            ["length effect (logits per unit normalised word difference)",
             "n/a" if not math.isfinite(self.length_coef) else f"{self.length_coef:.3f}"],
            ["Bradley–Terry difference new − base, logits [95% CI]", est(self.bt_diff)],
            ["Bradley–Terry difference, Elo points", "n/a" if not math.isfinite(self.bt_elo) else f"{self.bt_elo:.0f}"],
        ]
        if self.mean_p_new is not None:
            rows.append(["mean P(new better)", f"{self.mean_p_new:.3f}"])
        if self.judged_by.startswith("proxy"):
            return rows
        rows += [["new reply flagged (share of judgments) [95% CI]", est(self.flags_new)],
                 ["base reply flagged (share of judgments) [95% CI]", est(self.flags_base)],
                 ["flags on new", flags], ["flags on base", flags_b]]
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {"new": self.new, "base": self.base, "judged_by": self.judged_by, "n": self.n,
                "comparisons": self.comparisons, "prompts": self.prompts, "wins": self.wins,
                "losses": self.losses, "ties": self.ties, "both_bad": self.both_bad,
                "win_rate": self.win_rate.as_dict(), "bt_diff": self.bt_diff.as_dict(),
                "bt_elo": None if not math.isfinite(self.bt_elo) else self.bt_elo,
                "length_controlled_win_rate": self.length_controlled.as_dict(),
                "length_coef": None if not math.isfinite(self.length_coef) else self.length_coef,
                "flags_new": self.flags_new.as_dict(), "flags_base": self.flags_base.as_dict(),
                "flag_counts_new": self.flag_counts_new, "flag_counts_base": self.flag_counts_base,
                "mean_p_new": self.mean_p_new, "note": self.note,
                "mean_length_new": None if not math.isfinite(self.mean_len_new) else self.mean_len_new,
                "mean_length_base": None if not math.isfinite(self.mean_len_base) else self.mean_len_base,
                "length_warning": self.length_warning}


def summarise(outcomes: Sequence[Outcome], *, new: str, base: str, judged_by: str = "clinicians",
              n_bootstrap: int = 500, confidence: float = 0.95, seed: int = 0,
              ridge: float = RIDGE) -> HeadToHead:
    """Every figure of the head-to-head from its outcomes (pure; no database).

    7 wins, 3 losses and 2 ties: a win rate of (7 + 1) / 12.

    >>> outs = [Outcome(i, r) for i, r in enumerate(["win"] * 7 + ["loss"] * 3 + ["tie"] * 2)]
    >>> h = summarise(outs, new="new", base="base", n_bootstrap=0)
    >>> round(h.win_rate.value, 3), [round(x, 3) for x in (h.win_rate.low, h.win_rate.high)]
    (0.667, [0.391, 0.862])
    >>> round(h.bt_diff.value, 2)
    0.69
    """
    h = HeadToHead(new=new, base=base, judged_by=judged_by)
    counts = Counter(o.result for o in outcomes)
    unknown = set(counts) - set(OUTCOMES)
    if unknown:
        raise AnalyticsError(f"unknown outcome(s): {', '.join(sorted(unknown))}")
    h.n = len(outcomes)
    h.wins, h.losses, h.ties, h.both_bad = (counts[k] for k in OUTCOMES)
    h.comparisons = len({o.comparison_id for o in outcomes})
    h.prompts = len({o.prompt_id for o in outcomes})
    per_comparison = {o.comparison_id: (o.len_new, o.len_base) for o in outcomes}  # one per comparison
    h.mean_len_new, h.mean_len_base = mean_lengths(per_comparison.values())
    if not outcomes:
        h.note = "no judgments on comparisons between these two candidates yet"
        return h
    scores = np.array([POINTS[o.result] for o in outcomes])
    h.win_rate = share(float(scores.sum()), h.n)
    diff = normalized_length_difference(np.array([o.len_new for o in outcomes]),
                                        np.array([o.len_base for o in outcomes]))
    ones = np.ones((1, h.n))
    bt = float(bt_difference(scores, ones, ridge=ridge)[0])
    rate, coef = length_controlled(scores, diff, ones, ridge=ridge)
    bt_low = bt_high = lc_low = lc_high = math.nan
    if n_bootstrap > 0:
        weights = cluster_weights([o.comparison_id for o in outcomes], n_bootstrap, np.random.default_rng(seed))
        bt_low, bt_high = percentile_interval(bt_difference(scores, weights, ridge=ridge), confidence)
        lc_low, lc_high = percentile_interval(length_controlled(scores, diff, weights, ridge=ridge)[0], confidence)
    h.bt_diff = Estimate(bt, bt_low, bt_high, h.n)
    h.length_controlled = Estimate(float(rate[0]), lc_low, lc_high, h.n)
    h.length_coef = float(coef[0])
    flagged_new = sum(1 for o in outcomes if o.flags_new)
    flagged_base = sum(1 for o in outcomes if o.flags_base)
    h.flags_new, h.flags_base = share(flagged_new, h.n), share(flagged_base, h.n)
    h.flag_counts_new = dict(Counter(f for o in outcomes for f in o.flags_new))
    h.flag_counts_base = dict(Counter(f for o in outcomes for f in o.flags_base))
    return h


def mean_lengths(pairs: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Mean (new, base) lengths over pairs of lengths; nan for none.

    >>> mean_lengths([(10, 4), (20, 6)]), mean_lengths([])
    ((15.0, 5.0), (nan, nan))
    """
    pairs = list(pairs)
    if not pairs:
        return math.nan, math.nan
    return (float(np.mean([a for a, _ in pairs])), float(np.mean([b for _, b in pairs])))


# --- From the database ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairItem:
    """One comparison between a reply of each candidate (texts included, for lengths and scoring)."""

    comparison_id: int
    prompt_id: int
    new_side: str
    messages: list[dict[str, Any]]
    text_new: str
    text_base: str


def _candidate_id(name: str, *, session: Session) -> int:
    found = session.exec(select(CandidateModel.id).where(CandidateModel.name == name)).first()
    if found is None:
        raise AnalyticsError(f"unknown candidate {name!r}")
    return found


def pair_items(new: str, base: str, *, session: Session,
               prompt_ids: Iterable[int] | None = None) -> list[PairItem]:
    """Every comparison between a reply of ``new`` and a reply of ``base`` (on ``prompt_ids`` only
    when given), in comparison id order."""
    new_id, base_id = _candidate_id(new, session=session), _candidate_id(base, session=session)
    if new_id == base_id:
        raise AnalyticsError("a head-to-head needs two different candidates")
    ra, rb = aliased(Response), aliased(Response)
    query = (select(Comparison.id, Comparison.prompt_id, ra.candidate_model_id, ra.text, rb.text, Prompt)
             .join(ra, ra.id == Comparison.response_a_id).join(rb, rb.id == Comparison.response_b_id)
             .join(Prompt, Prompt.id == Comparison.prompt_id)
             .where(((ra.candidate_model_id == new_id) & (rb.candidate_model_id == base_id))
                    | ((ra.candidate_model_id == base_id) & (rb.candidate_model_id == new_id)))
             .order_by(Comparison.id))
    wanted = None if prompt_ids is None else set(prompt_ids)
    items = []
    for cid, pid, a_model, text_a, text_b, prompt in session.exec(query):
        if wanted is not None and pid not in wanted:
            continue
        new_side = "a" if a_model == new_id else "b"
        text_new, text_base = (text_a, text_b) if new_side == "a" else (text_b, text_a)
        items.append(PairItem(cid, pid, new_side, prompt_conversation(prompt), text_new, text_base))
    return items


def judged_outcomes(items: Sequence[PairItem], *, session: Session,
                    sources: Sources = CLINICIANS) -> list[Outcome]:
    """The judgments on ``items`` by annotators of ``sources`` (``db.rules.Sources``), as outcomes for the
    new side."""
    by_id = {item.comparison_id: item for item in items}
    outcomes = []
    ids = sorted(by_id)
    for start in range(0, len(ids), 500):
        rows = session.exec(
            select(Judgment.comparison_id, Judgment.preferred, Judgment.flags_a, Judgment.flags_b)
            .join(Annotator, Annotator.id == Judgment.annotator_id)
            .where(Judgment.comparison_id.in_(ids[start:start + 500]), sources.condition())
            .order_by(Judgment.comparison_id, Judgment.id))
        for cid, preferred, flags_a, flags_b in rows:
            item = by_id[cid]
            flags_new, flags_base = (flags_a, flags_b) if item.new_side == "a" else (flags_b, flags_a)
            outcomes.append(Outcome(cid, outcome_of(preferred, item.new_side), reply_length(item.text_new),
                                    reply_length(item.text_base), tuple(flags_new or ()), tuple(flags_base or ()),
                                    item.prompt_id))
    return outcomes


def head_to_head(new: str, base: str, *, session: Session, sources: str | Sources = CLINICIANS,
                 prompt_ids: Iterable[int] | None = None, n_bootstrap: int = 500, seed: int = 0) -> HeadToHead:
    """The judges' head-to-head of ``new`` against ``base`` over all comparisons between their
    replies (on ``prompt_ids`` only when given: an A/B test's held-out prompts); the judges are
    ``sources`` (a ``--sources`` value: model judges count only under ``judges``, ``judge:NAME`` or ``all``)."""
    sources = Sources.parse(sources)
    items = pair_items(new, base, session=session, prompt_ids=prompt_ids)
    outcomes = judged_outcomes(items, session=session, sources=sources)
    h = summarise(outcomes, new=new, base=base, judged_by=str(sources), n_bootstrap=n_bootstrap, seed=seed)
    _item_lengths(h, items)
    waiting = len(items) - h.comparisons
    if items and waiting:
        h.note = f"{waiting} of {len(items)} comparisons have no judgment by {sources} yet"
    return h


def _item_lengths(h: HeadToHead, items: Sequence[PairItem]) -> None:
    """Mean lengths over every comparison, judged or not: the warning shows before the first judgment."""
    if items:
        h.mean_len_new, h.mean_len_base = mean_lengths((reply_length(i.text_new), reply_length(i.text_base))
                                                       for i in items)


def scored_outcomes(items: Sequence[PairItem], scorer: Any) -> tuple[list[Outcome], list[float]]:
    """A reward model's verdict on each item: P(new better) = σ(score_new − score_base); a win above
    ½, a loss below, a tie at exactly ½. ``scorer`` has ``score_batch([(messages, reply), …])`` (as
    ``reward.scoring.RewardModel``) or is a callable ``(messages, reply) -> float``.

    >>> item = PairItem(1, 1, "a", [], "a much longer reply here", "short")
    >>> outs, p = scored_outcomes([item], lambda messages, reply: float(len(reply.split())))
    >>> outs[0].result, round(p[0], 3)
    ('win', 0.982)
    """
    inputs = [(i.messages, text) for i in items for text in (i.text_new, i.text_base)]
    if hasattr(scorer, "score_batch"):
        values = [float(v) for v in scorer.score_batch(inputs)] if inputs else []
    else:
        values = [float(scorer(messages, text)) for messages, text in inputs]
    outcomes, probabilities = [], []
    for k, item in enumerate(items):
        p = float(_sigmoid(values[2 * k] - values[2 * k + 1]))
        probabilities.append(p)
        result = "win" if p > 0.5 else ("loss" if p < 0.5 else "tie")
        outcomes.append(Outcome(item.comparison_id, result, reply_length(item.text_new),
                                reply_length(item.text_base), prompt_id=item.prompt_id))
    return outcomes, probabilities


def head_to_head_from_scores(new: str, base: str, scorer: Any, *, session: Session, label: str,
                             prompt_ids: Iterable[int] | None = None, n_bootstrap: int = 500,
                             seed: int = 0) -> HeadToHead:
    """The same head-to-head judged by a reward model: a proxy, labelled ``proxy: <label>``."""
    items = pair_items(new, base, session=session, prompt_ids=prompt_ids)
    outcomes, probabilities = scored_outcomes(items, scorer)
    h = summarise(outcomes, new=new, base=base, judged_by=f"proxy: {label}", n_bootstrap=n_bootstrap, seed=seed)
    _item_lengths(h, items)
    h.mean_p_new = float(np.mean(probabilities)) if probabilities else None
    return h


# --- A/B tests in the report and the dashboard -----------------------------------------------------


@dataclass
class AbTestTable:
    abtest_id: int
    new: str
    base: str
    prompts: int
    overlap: int
    priority: float
    created_at: Any
    result: HeadToHead

    @property
    def caption(self) -> str:
        return (f"A/B test {self.abtest_id}: {self.new} (new) vs {self.base} (base) on {self.prompts} held-out "
                f"prompts, overlap {self.overlap}, priority {self.priority:g}; judged by {self.result.judged_by}")

    def as_dict(self) -> dict[str, Any]:
        return {"abtest_id": self.abtest_id, "new": self.new, "base": self.base, "prompts": self.prompts,
                "overlap": self.overlap, "priority": self.priority, "created_at": str(self.created_at),
                "head_to_head": self.result.as_dict()}


def abtest_tables(*, session: Session, sources: str | Sources = CLINICIANS, n_bootstrap: int = 500,
                  seed: int = 0) -> list[AbTestTable]:
    """One head-to-head per recorded A/B test, on that test's prompts, oldest test first."""
    new_c, base_c = aliased(CandidateModel), aliased(CandidateModel)
    rows = session.exec(select(AbTest, new_c.name, base_c.name)
                        .join(new_c, new_c.id == AbTest.new_candidate_id)
                        .join(base_c, base_c.id == AbTest.base_candidate_id).order_by(AbTest.id)).all()
    tables = []
    for test, new, base in rows:
        result = head_to_head(new, base, session=session, sources=sources, prompt_ids=test.prompt_ids or [],
                              n_bootstrap=n_bootstrap, seed=seed)
        tables.append(AbTestTable(test.id, new, base, len(test.prompt_ids or []), test.overlap, test.priority,
                                  test.created_at, result))
    return tables


def head_to_head_section(tables: Sequence[AbTestTable], *, title: str = "Head-to-head (A/B tests)") -> Section:
    """The report's section: one table per A/B test (every cell is escaped by the renderer)."""
    blocks: list = [Paragraph(
        "Each A/B test pairs a new candidate's reply with its base's on prompts the new one was not trained on. "
        "Ties count half a win; both bad counts as a tie in the win rate and is shown separately. The win-rate "
        "interval is Wilson's on the judgments; the Bradley–Terry and length-controlled intervals resample "
        "comparisons. The length-controlled win rate is a logistic fit of the outcome on the normalised "
        "word-count difference, read at equal length.")]
    if not tables:
        blocks.append(Paragraph("No A/B tests yet: `therapref abtest NEW --against BASE` creates one."))
    for t in tables:
        if t.result.note:
            blocks.append(Paragraph(f"A/B test {t.abtest_id}: {t.result.note}.", note=True))
        if t.result.length_warning:
            blocks.append(Paragraph(f"A/B test {t.abtest_id}: {t.result.length_warning}.", note=True))
        blocks.append(Table(["measure", "value"], t.result.rows(), t.caption))
    return Section("abtests", title, blocks)


def format_table(h: HeadToHead) -> str:
    """The head-to-head as aligned plain text (the CLI's output).

    >>> print(format_table(summarise([Outcome(1, "win")], new="n", base="b", n_bootstrap=0)).splitlines()[0])
    n (new) vs b (base), judged by clinicians
    """
    lines = [f"{h.new} (new) vs {h.base} (base), judged by {h.judged_by}"]
    if h.note:
        lines.append(f"  note: {h.note}")
    if h.length_warning:
        lines.append(f"  {h.length_warning}")
    rows = h.rows()
    width = max(len(r[0]) for r in rows)
    lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(lines)


__all__ = ["Outcome", "HeadToHead", "AbTestTable", "PairItem", "LENGTH_WARNING", "length_gap", "length_warning",
           "mean_lengths", "outcome_of", "wilson", "share", "summarise",
           "pair_items", "judged_outcomes", "head_to_head", "scored_outcomes", "head_to_head_from_scores",
           "abtest_tables", "head_to_head_section", "format_table"]
