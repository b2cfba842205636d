"""Pure decision rules: which reply of a comparison won, which reply of a prompt is preferred
(majority or Bradley–Terry), and KTO labels. Every function returns a drop reason when it declines."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from db.rules import majority_of_counts
from exports.filters import ExportFilters
from exports.source import Votes

# Bradley–Terry strengths closer than this are one strength: the id then decides, so that a fit's last
# bits of rounding never pick the reply.
BT_SCORE_DECIMALS = 9


def pair_winner(votes: Votes, filters: ExportFilters) -> tuple[str | None, str]:
    """The winning side of one comparison, or ``None`` and why not.

    Agreement is the winner's share of all votes (ties and both-bad count against it).

    >>> f = ExportFilters(min_votes=2)
    >>> pair_winner(Votes(a=2, b=1), f)
    ('a', 'kept')
    >>> pair_winner(Votes(a=1), f)
    (None, 'below_min_votes')
    >>> pair_winner(Votes(a=1, b=1), f)
    (None, 'no_majority')
    >>> pair_winner(Votes(a=1, both_bad=2), f)
    (None, 'both_bad')
    >>> pair_winner(Votes(b=2, tie=2), ExportFilters(min_agreement=0.6))
    (None, 'below_agreement')
    """
    if votes.total < filters.min_votes:
        return None, "below_min_votes"
    if votes.both_bad > max(votes.a, votes.b):
        return None, "both_bad"
    # The majority between the two replies; tie votes only weigh in through the agreement rule below.
    winner = majority_of_counts({"a": votes.a, "b": votes.b})
    if winner is None:
        return None, "no_majority"
    won, lost = (votes.a, votes.b) if winner == "a" else (votes.b, votes.a)
    if won - lost < max(filters.min_margin, 1):
        return None, "below_margin"
    if won / votes.total < filters.min_agreement:
        return None, "below_agreement"
    return winner, "kept"


def ruled_votes(votes: Votes, preferred: str) -> Votes:
    """A comparison's votes once a lead adjudicated it: every vote counts for the lead's label, so
    the label wins whatever the majority said and the vote-count filters still see as many votes.

    >>> ruled_votes(Votes(a=2, b=1), "b"), ruled_votes(Votes(a=1, b=1), "both_bad")
    (Votes(a=0, b=3, tie=0, both_bad=0), Votes(a=0, b=0, tie=0, both_bad=2))
    """
    return Votes(**{preferred: votes.total})


def worse_on_criterion(verdicts: Votes, side: str) -> bool:
    """``--not-worse-on``: is reply ``side`` (``a`` or ``b``) the worse one of its comparison on the
    criterion? ``verdicts`` counts that criterion's verdicts (a, b, tie) among the judgments used (those
    passing the export's filters). Worse means: the strict plurality of a / b / tie verdicts
    (``db.rules.majority_of_counts``) names the other reply. A plurality of ties, level counts (e.g. one
    a, one b) or no verdicts at all do not make a reply worse.

    >>> worse_on_criterion(Votes(a=1, b=2), "a"), worse_on_criterion(Votes(a=1, b=2), "b")
    (True, False)
    >>> worse_on_criterion(Votes(a=1, b=1), "a"), worse_on_criterion(Votes(b=1, tie=2), "a")
    (False, False)
    >>> worse_on_criterion(Votes(), "a"), worse_on_criterion(Votes(b=2, tie=1), "a")
    (False, True)
    """
    top = majority_of_counts({"a": verdicts.a, "b": verdicts.b, "tie": verdicts.tie})
    return top in ("a", "b") and top != side


def pair_margin(votes: Votes) -> float:
    """Share of votes separating winner and loser (0..1), written as the optional ``margin`` column.

    >>> pair_margin(Votes(a=3, b=1))
    0.5
    """
    return round(abs(votes.a - votes.b) / votes.total, 4) if votes.total else 0.0


@dataclass
class Tally:
    wins: int = 0
    losses: int = 0
    votes: int = 0
    both_bad: int = 0

    @property
    def net(self) -> int:
        return self.wins - self.losses


def tallies(comparisons: Iterable[tuple[int, int, Votes]]) -> dict[int, Tally]:
    """Wins, losses and votes per reply over a prompt's comparisons.

    >>> t = tallies([(1, 2, Votes(a=2, b=1)), (1, 3, Votes(b=1, tie=1))])
    >>> (t[1].wins, t[1].losses, t[1].votes), (t[3].wins, t[3].votes)
    ((2, 2, 5), (1, 2))
    """
    out: dict[int, Tally] = {}
    for a_id, b_id, votes in comparisons:
        ta, tb = out.setdefault(a_id, Tally()), out.setdefault(b_id, Tally())
        ta.wins += votes.a
        ta.losses += votes.b
        tb.wins += votes.b
        tb.losses += votes.a
        ta.votes += votes.total
        tb.votes += votes.total
        ta.both_bad += votes.both_bad
        tb.both_bad += votes.both_bad
    return out


def majority_choice(table: dict[int, Tally], filters: ExportFilters, *, eligible: set[int]) -> tuple[int | None, str]:
    """The eligible reply (not flagged, allowed by the filters) with the best net wins, if it has
    enough votes, margin and agreement and was not judged "both bad" more often than it won.

    >>> t = tallies([(1, 2, Votes(a=3)), (2, 3, Votes(a=1))])
    >>> majority_choice(t, ExportFilters(min_votes=3), eligible={1, 2})
    (1, 'kept')
    >>> majority_choice(t, ExportFilters(), eligible={2, 3})
    (None, 'below_margin')
    >>> majority_choice(t, ExportFilters(), eligible=set())
    (None, 'all_flagged_or_filtered')
    """
    if not table:
        return None, "no_judgments"
    candidates = [rid for rid in table if rid in eligible]
    if not candidates:
        return None, "all_flagged_or_filtered"
    best = max(candidates, key=lambda rid: (table[rid].net, table[rid].wins, -rid))
    reason = _checked(table[best], filters)
    return (best if reason == "kept" else None), reason


def _checked(tally: Tally, filters: ExportFilters) -> str:
    if tally.votes < filters.min_votes:
        return "below_min_votes"
    if tally.both_bad > tally.wins:
        return "both_bad"
    if tally.net < max(filters.min_margin, 1):
        return "below_margin"
    if tally.wins / tally.votes < filters.min_agreement:
        return "below_agreement"
    return "kept"


def bradley_terry(comparisons: Iterable[tuple[int, int, Votes]], *, prior: float = 0.5) -> dict[int, float]:
    """Bradley–Terry log-strengths of a prompt's replies (``analytics.bradley_terry``; ties count half
    to each side; ``prior`` pseudo-wins and pseudo-losses against a virtual average reply keep unbeaten
    replies finite). "both bad" votes say nothing about which reply is better and are left out.

    >>> s = bradley_terry([(1, 2, Votes(a=3, b=1)), (2, 3, Votes(a=2))])
    >>> sorted(s, key=s.get, reverse=True)
    [1, 2, 3]
    """
    # Imported here: numpy and the fit load only when --select bt asks for them (a DPO export of
    # 1M judgments was 13 MB larger with them loaded up front).
    from analytics.bradley_terry import bradley_terry_strengths

    return bradley_terry_strengths(
        ((a_id, b_id, votes.a + votes.tie / 2, votes.b + votes.tie / 2) for a_id, b_id, votes in comparisons),
        prior=prior)


def bt_choice(comparisons: list[tuple[int, int, Votes]], filters: ExportFilters, *,
              eligible: set[int]) -> tuple[int | None, str]:
    """The eligible reply with the highest Bradley–Terry score among the prompt's replies.

    >>> bt_choice([(1, 2, Votes(a=2)), (2, 3, Votes(a=2))], ExportFilters(), eligible={1, 2, 3})
    (1, 'kept')
    """
    if not comparisons:
        return None, "no_judgments"
    scores = bradley_terry(comparisons)
    candidates = [rid for rid in scores if rid in eligible]
    if not candidates:
        return None, "all_flagged_or_filtered"
    best = max(candidates, key=lambda rid: (round(scores[rid], BT_SCORE_DECIMALS), -rid))
    tally = tallies(comparisons)[best]
    # Bradley–Terry already weighs who beat whom, so the margin rule is not applied on top.
    reason = _checked(tally, ExportFilters(min_votes=filters.min_votes, min_margin=0,
                                           min_agreement=filters.min_agreement))
    return (best if reason == "kept" else None), reason


def kto_label(tally: Tally, filters: ExportFilters, *, flagged: bool) -> tuple[bool | None, str]:
    """KTO label of one reply: desirable when it won clearly, undesirable when it lost clearly or
    a clinician flagged it.

    >>> kto_label(Tally(wins=3, losses=0, votes=3), ExportFilters(), flagged=False)
    (True, 'kept')
    >>> kto_label(Tally(wins=3, losses=0, votes=3), ExportFilters(), flagged=True)
    (False, 'kept')
    >>> kto_label(Tally(wins=1, losses=1, votes=2), ExportFilters(), flagged=False)
    (None, 'no_majority')
    """
    if flagged:
        return False, "kept"
    if tally.votes < filters.min_votes:
        return None, "below_min_votes"
    if tally.both_bad > max(tally.wins, tally.losses):
        return False, "kept"
    if tally.net == 0:
        return None, "no_majority"
    if abs(tally.net) < max(filters.min_margin, 1):
        return None, "below_margin"
    if max(tally.wins, tally.losses) / tally.votes < filters.min_agreement:
        return None, "below_agreement"
    return tally.net > 0, "kept"
