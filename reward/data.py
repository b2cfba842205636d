"""Where pairs come from: the database (judgments) or a preference file (TRL JSONL, HH-RLHF, Counsel Chat)."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from db.models import Annotator, Comparison, Judgment, Prompt, Response
from reward.errors import RewardError
from reward.pairs import PairStats, PreferencePair, Vote, build_pairs, messages_key

FILE_FORMATS = ("trl", "hh", "counselchat")
FORMAT_ALIASES = {"hh-rlhf": "hh", "anthropic-hh": "hh", "counselchat-upvotes": "counselchat", "upvotes": "counselchat",
                  "trl-prefs": "trl"}


def prompt_messages(prompt: Prompt) -> tuple[tuple[str, str], ...]:
    """The conversation of a stored prompt, its system message first when it has one."""
    messages = list(prompt.messages or [])
    if prompt.system_prompt and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": prompt.system_prompt}, *messages]
    return messages_key(messages)


def load_votes(*, session: Session) -> list[Vote]:
    """Every judgment with its comparison's texts, annotator role and guideline version."""
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
    votes = []
    margin_of = _imported_margin_reader()
    for judgment, comparison, annotator, prompt, a, b in rows:
        if prompt.id not in cache:
            cache[prompt.id] = prompt_messages(prompt)
        votes.append(Vote(
            comparison_id=comparison.id, prompt_key=f"prompt:{prompt.id}", prompt=cache[prompt.id],
            text_a=a.text, text_b=b.text, preferred=judgment.preferred, response_a_id=a.id,
            response_b_id=b.id, strength=judgment.strength, flags_a=tuple(judgment.flags_a or ()),
            flags_b=tuple(judgment.flags_b or ()), annotator=annotator.username, role=annotator.role,
            guideline_version=judgment.guideline_version,
            margin=margin_of(judgment.rationale) if annotator.role == "source" else None,
        ))
    return votes


def _imported_margin_reader():
    """The importers' convention for a dataset's own margin (kept in ``Judgment.rationale``)."""
    try:
        from db.importers import imported_margin
    except ImportError:  # importers not installed: imported judgments carry no margin
        return lambda _rationale: None
    return imported_margin


def pairs_from_db(
    *,
    session: Session,
    aggregation: str = "judgment",
    margin_mapping: dict[int, float] | None = None,
    sources: str | Sequence[str] = "clinicians",
    guideline_versions: Sequence[int] | None = None,
) -> tuple[list[PreferencePair], PairStats]:
    """Pairs from the stored judgments (see :func:`reward.pairs.build_pairs` for the rules)."""
    return build_pairs(load_votes(session=session), aggregation=aggregation, margin_mapping=margin_mapping,
                       sources=sources, guideline_versions=guideline_versions)


def _key(messages: tuple[tuple[str, str], ...]) -> str:
    return "sha:" + hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:16]


def guess_format(path: Path) -> str:
    """Pick the reader from the name and the first record.

    >>> guess_format(Path("counsel_chat.csv"))
    'counselchat'
    """
    name = path.name.lower()
    if name.endswith(".csv"):
        return "counselchat"
    for line in _lines(path):
        if line.strip():
            record = json.loads(line)
            if isinstance(record, dict) and "prompt" not in record and isinstance(record.get("chosen"), str) \
                    and "\n\nHuman:" in record["chosen"]:
                return "hh"
            return "trl"
    return "trl"


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        yield from handle


def read_preference_file(path: str | Path, *, format: str | None = None) -> list[PreferencePair]:
    """Pairs from any preference file ``therapref import preferences`` reads.

    The importers' own parsers (``db.importers``) read the file into a throwaway in-memory database,
    so a file means exactly what ``import preferences`` would store; without them, the readers below
    are used.
    """
    try:
        from db.importers import import_preferences
    except ImportError:
        return read_preference_file_direct(path, format=format)
    from db.engine import make_engine, session_scope
    from db.migrate import upgrade

    path = Path(path)
    if not path.is_file():
        raise RewardError(f"{path}: no such file")
    engine = make_engine("sqlite://")
    try:
        upgrade(engine)
        with session_scope(engine) as session:
            import_preferences(path, session=session, format=format)
            pairs, _ = build_pairs(load_votes(session=session), sources="both", margin_mapping={})
    finally:
        engine.dispose()
    return pairs


def read_preference_file_direct(path: str | Path, *, format: str | None = None) -> list[PreferencePair]:
    """Pairs from a preference file, read without a database.

    Formats: ``trl`` (prompt/chosen/rejected JSONL, standard or conversational, explicit or implicit
    prompt, optional ``margin``), ``hh`` (Anthropic HH-RLHF JSONL, optionally gzipped),
    ``counselchat`` (Counsel Chat CSV: answers to one question with different upvotes).
    """
    path = Path(path)
    if not path.is_file():
        raise RewardError(f"{path}: no such file")
    fmt = FORMAT_ALIASES.get(format, format) if format else guess_format(path)
    if fmt not in FILE_FORMATS:
        raise RewardError(f"{path}: unknown format {fmt!r} (expected one of {', '.join(FILE_FORMATS)})")
    try:
        if fmt == "counselchat":
            return counselchat_pairs(path)
        reader = _trl_pair if fmt == "trl" else _hh_pair
        source = f"file:{path.name}"
        pairs = []
        for number, line in enumerate(_lines(path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("expected a JSON object")
                pairs.append(reader(record, source))
            except (ValueError, KeyError, TypeError) as exc:
                raise RewardError(f"{path}, line {number}: {exc}") from None
        return pairs
    except UnicodeDecodeError as exc:
        raise RewardError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except (OSError, EOFError) as exc:
        raise RewardError(f"{path}: cannot read ({exc})") from None


def _as_messages(value: Any, field: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if field == "prompt" else [
            {"role": "assistant", "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    raise ValueError(f"{field!r} must be text or a list of role/content messages")


def _trl_pair(record: dict[str, Any], source: str) -> PreferencePair:
    for name in ("chosen", "rejected"):
        if name not in record:
            raise ValueError(f"missing {name!r}")
    chosen, rejected = _as_messages(record["chosen"], "chosen"), _as_messages(record["rejected"], "rejected")
    if "prompt" in record:
        prompt = _as_messages(record["prompt"], "prompt")
    else:  # implicit prompt: the shared prefix of both conversations
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    chosen_text = "\n".join(m["content"] for m in chosen).strip()
    rejected_text = "\n".join(m["content"] for m in rejected).strip()
    if not chosen_text or not rejected_text:
        raise ValueError("chosen or rejected reply is empty")
    frozen = messages_key(prompt)
    margin = record.get("margin", 0.0)
    return PreferencePair(prompt=frozen, chosen=chosen_text, rejected=rejected_text, prompt_key=_key(frozen),
                          margin=float(margin or 0.0), source=str(record.get("source") or source))


def _hh_turns(text: str) -> list[dict[str, str]]:
    turns = []
    for block in text.split("\n\nHuman:")[1:]:
        human, _, assistant = block.partition("\n\nAssistant:")
        turns.append({"role": "user", "content": human.strip()})
        if _:
            turns.append({"role": "assistant", "content": assistant.strip()})
    if not turns:
        raise ValueError("no '\\n\\nHuman:' turn found")
    return turns


def _hh_pair(record: dict[str, Any], source: str) -> PreferencePair:
    chosen, rejected = _hh_turns(record["chosen"]), _hh_turns(record["rejected"])
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("each conversation must end with an assistant turn")
    frozen = messages_key(chosen[:-1])
    return PreferencePair(prompt=frozen, chosen=chosen[-1]["content"], rejected=rejected[-1]["content"],
                          prompt_key=_key(frozen), source=source)


def counselchat_pairs(path: str | Path, *, upvote_margin: bool = False) -> list[PreferencePair]:
    """Counsel Chat: answers to the same question with different upvotes (more upvotes = chosen).

    Rows come from the importer's reader (``db.importers.iter_counselchat_rows``: same cleaning,
    same one-line errors); the prompt is the question as one user turn, the key its questionID.
    With ``upvote_margin`` each pair's ``margin`` is the upvote difference (≥ 1) instead of 0, for
    callers that weight, filter or map it (e.g. to TRL's margin); off by default.
    """
    from db.importers import iter_counselchat_rows
    from db.importers.base import ImportFormatError

    by_question: dict[str, list[tuple[str, str, int]]] = {}
    try:
        for row in iter_counselchat_rows(path):
            if row.answer:
                by_question.setdefault(row.questionID, []).append((row.question, row.answer, row.upvotes or 0))
    except ImportFormatError as exc:
        raise RewardError(str(exc)) from None
    pairs = []
    for qid, answers in by_question.items():
        prompt = (("user", answers[0][0]),)
        for (_, text_x, up_x), (_, text_y, up_y) in itertools.combinations(answers, 2):
            if up_x == up_y or text_x == text_y:
                continue
            chosen, rejected = (text_x, text_y) if up_x > up_y else (text_y, text_x)
            pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected,
                                        prompt_key=f"counselchat:{qid}", source="import:counselchat-upvotes",
                                        margin=float(abs(up_x - up_y)) if upvote_margin else 0.0))
    return pairs
