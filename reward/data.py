"""Where pairs come from: the database (judgments) or a preference file (TRL JSONL, HH-RLHF, Counsel Chat)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from db.criteria import known_criterion_names, verdicts_by_judgment
from db.models import Annotator, Comparison, Judgment, Prompt, Response
from db.rules import Sources, prompt_conversation
from reward.errors import RewardError
from reward.pairs import PairStats, PreferencePair, Ruling, Vote, build_pairs, messages_key


def prompt_messages(prompt: Prompt) -> tuple[tuple[str, str], ...]:
    """The conversation of a stored prompt (``db.rules.prompt_conversation``: its system message
    first when it has one), frozen as (role, content) pairs for the encoder and prompt keys."""
    return messages_key(prompt_conversation(prompt))


def load_votes(*, session: Session, criterion: str | None = None) -> list[Vote]:
    """Every judgment with its comparison's texts, annotator role and guideline version (and its
    verdict on ``criterion`` when one is named)."""
    resp_a, resp_b = aliased(Response), aliased(Response)
    rows = session.exec(
        select(Judgment, Comparison, Annotator, Prompt, resp_a, resp_b)
        .join(Comparison, Judgment.comparison_id == Comparison.id)
        .join(Annotator, Judgment.annotator_id == Annotator.id)
        .join(Prompt, Comparison.prompt_id == Prompt.id)
        .join(resp_a, Comparison.response_a_id == resp_a.id)
        .join(resp_b, Comparison.response_b_id == resp_b.id)
        .order_by(Judgment.id)
    ).all()
    cache: dict[int, tuple[tuple[str, str], ...]] = {}
    verdicts = verdicts_by_judgment(session=session, criterion=criterion) if criterion is not None else {}
    votes = []
    for judgment, comparison, annotator, prompt, a, b in rows:
        if prompt.id not in cache:
            cache[prompt.id] = prompt_messages(prompt)
        votes.append(Vote(
            comparison_id=comparison.id, prompt_key=f"prompt:{prompt.id}", prompt=cache[prompt.id],
            text_a=a.text, text_b=b.text, preferred=judgment.preferred, response_a_id=a.id,
            response_b_id=b.id, strength=judgment.strength, flags_a=tuple(judgment.flags_a or ()),
            flags_b=tuple(judgment.flags_b or ()), annotator=annotator.username, role=annotator.role,
            guideline_version=judgment.guideline_version,
            margin=judgment.margin if annotator.role == "source" else None,  # imported dataset's own
            criteria=tuple(verdicts.get(judgment.id, {}).items()),
        ))
    return votes


def load_rulings(*, session: Session) -> dict[int, Ruling]:
    """The leads' final labels (``db.adjudication``) by comparison id."""
    from db.adjudication import adjudications

    return {cid: Ruling(row.preferred, row.strength, tuple(row.flags_a or ()), tuple(row.flags_b or ()))
            for cid, row in adjudications(session=session).items()}


def resolve_aggregation(aggregation: str, rulings: dict[int, Ruling], votes: Sequence[Vote],
                        sources: str | Sequence[str] | Sources) -> str:
    """``auto``: ``adjudicated`` when a selected clinicians' comparison has a ruling, else ``judgment``;
    any other name as it is.

    >>> v = [Vote(1, "p", (), "x", "y", "a")]
    >>> resolve_aggregation("auto", {1: Ruling("b")}, v, "clinicians"), resolve_aggregation("auto", {}, v, "both")
    ('adjudicated', 'judgment')
    >>> ruled = {1: Ruling("b")}
    >>> resolve_aggregation("auto", ruled, v, "imported"), resolve_aggregation("majority", ruled, v, "all")
    ('judgment', 'majority')
    """
    if aggregation != "auto":
        return aggregation
    ruled = Sources.parse(sources).clinicians and any(v.comparison_id in rulings for v in votes)
    return "adjudicated" if ruled else "judgment"


def pairs_from_db(
    *,
    session: Session,
    aggregation: str = "auto",
    margin_mapping: dict[int, float] | None = None,
    sources: str | Sequence[str] = "clinicians",
    guideline_versions: Sequence[int] | None = None,
    criterion: str | None = None,
) -> tuple[list[PreferencePair], PairStats]:
    """Pairs from the stored judgments (see :func:`reward.pairs.build_pairs` for the rules); with
    ``criterion``, from that criterion's verdicts (an unknown name is an error that lists the known ones);
    ``aggregation="auto"`` resolves through :func:`resolve_aggregation` (``stats.aggregation`` says which)."""
    if criterion is not None:
        known = known_criterion_names(session=session)
        if criterion not in known:
            raise RewardError(f"unknown criterion {criterion!r} (known: {', '.join(known) or 'none'})")
    votes = load_votes(session=session, criterion=criterion)
    rulings = load_rulings(session=session)
    return build_pairs(votes, aggregation=resolve_aggregation(aggregation, rulings, votes, sources),
                       margin_mapping=margin_mapping, sources=sources, guideline_versions=guideline_versions,
                       criterion=criterion, rulings=rulings)


def read_preference_file(path: str | Path, *, format: str | None = None, margins: bool = True) -> list[PreferencePair]:
    """Pairs from any file ``therapref import preferences`` reads: ``trl``, ``hh-rlhf`` or
    ``counselchat-upvotes`` (the importers' format names and aliases; detected when ``format`` is None).

    The importers (``db.importers``) read the file into a throwaway in-memory database, so a file means
    exactly what ``import preferences`` would store: the same parsing, skips and one-line errors
    (``file, line N: problem``). Each pair keeps the dataset's own margin (a TRL ``margin``, Counsel
    Chat's upvote gap) unless ``margins`` is False (then 0: TRL's plain loss).
    """
    from db.engine import make_engine, session_scope
    from db.importers import ImportFormatError, import_preferences
    from db.migrate import upgrade

    engine = make_engine("sqlite://")
    try:
        upgrade(engine)
        with session_scope(engine) as session:
            import_preferences(path, session=session, format=format)
            pairs, _ = build_pairs(load_votes(session=session), sources="both", margin_mapping={} if margins else None)
    except ImportFormatError as exc:
        raise RewardError(str(exc)) from None
    finally:
        engine.dispose()
    return pairs
