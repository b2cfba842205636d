"""Pure rules over the data model that every area shares (one definition each, imported everywhere).

Who counts as a clinician, a prompt's conversation as the chatbot sees it, the majority of a
comparison's votes, and the reply length that the "longer reply wins" baseline compares. They live
in ``db`` because every area (reward, exports, analytics, candidates, the app) may import ``db`` and
nothing else below it; see ``docs/architecture.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from db.errors import SourcesError

#: Roles whose judgments are clinicians' (leads adjudicate and judge too; admins are lead clinicians);
#: ``source`` rows are imported datasets and ``judge:<name>`` annotators are models, never counted as
#: clinicians unless asked.
CLINICIAN_ROLES: tuple[str, ...] = ("clinician", "lead", "admin")
#: Roles of accounts that sign in, least to most privileged (single sign-on maps claims onto these and
#: a person in several mapped groups gets the most privileged one). A new role is one entry here; a
#: ``lead`` judges like a clinician and also adjudicates disputed comparisons (db.adjudication).
LOGIN_ROLES: tuple[str, ...] = ("clinician", "lead", "admin")
#: Usernames of model judges' source annotators (``judge:<name>``; role ``source``).
JUDGE_PREFIX = "judge:"

Messages = list[dict[str, Any]]


def is_judge(username: str) -> bool:
    """Whether an annotator is a model judge (``judge:<name>``), not a person or an imported dataset.

    >>> is_judge("judge:gpt-4o"), is_judge("import:hh"), is_judge("dr.lee")
    (True, False, False)
    """
    return username.startswith(JUDGE_PREFIX)


#: The role of non-login annotators: imported datasets (``import:<dataset>``) and model judges (``judge:<name>``).
SOURCE_ROLE = "source"
#: Name prefixes of the non-login annotators a ``--sources`` item may name one by one.
SOURCE_NAME_PREFIXES = (JUDGE_PREFIX, "import:")
_KEYWORDS = {"clinicians": ("clinicians",), "imported": ("imported",), "both": ("clinicians", "imported"),
             "judges": ("judges",), "all": ("clinicians", "imported", "judges", "all")}


@dataclass(frozen=True)
class Sources:
    """Whose judgments count: a ``--sources`` value parsed once (comma-separated items).

    ``clinicians`` (roles clinician/lead/admin), ``imported`` (datasets ``import:*``), ``judges`` (every model
    judge ``judge:*``), ``both`` (clinicians and imported), ``all`` (everyone), or one annotator's name
    (``judge:NAME``, ``import:DATASET``). Model judges count only when asked for: by name, ``judges`` or
    ``all``; never as clinicians or imported data. ``includes`` is the rule in Python, ``condition`` the
    same rule as a SQL ``WHERE`` term on ``annotator``: every area filters with one or the other.

    >>> Sources.parse("both")
    Sources('both')
    >>> s = Sources.parse("clinicians, judge:m")
    >>> s.includes("admin", "dr.lee"), s.includes("source", "judge:m"), s.includes("source", "judge:x")
    (True, True, False)
    >>> Sources.parse("imported").includes("source", "judge:m"), Sources.parse("judges").includes("source", "judge:m")
    (False, True)
    >>> try:
    ...     Sources.parse("clinician")
    ... except ValueError as exc:  # db.errors.SourcesError, a TheraPrefError: one line on the command line
    ...     print(exc)
    --sources 'clinician': not clinicians, imported, both, judges, all, judge:NAME or import:DATASET
    """

    text: str
    clinicians: bool = False
    imported: bool = False
    judges: bool = False
    everyone: bool = False
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, value: str | Sequence[str] | Sources, *, option: str = "--sources") -> Sources:
        """The parsed value of ``--sources`` (a string, a list of items, or an already parsed one);
        ``option`` names the setting in the error message."""
        if isinstance(value, Sources):
            return value
        text = value if isinstance(value, str) else ",".join(value)
        items = [item.strip() for item in text.split(",")]
        kinds: set[str] = set()
        names: set[str] = set()
        for item in items:
            if item in _KEYWORDS:
                kinds.update(_KEYWORDS[item])
            elif any(item.startswith(p) and len(item) > len(p) for p in SOURCE_NAME_PREFIXES):
                names.add(item)
            else:
                raise SourcesError(f"{option} {text.strip()!r}: not clinicians, imported, both, judges, all, "
                                   "judge:NAME or import:DATASET")
        return cls(", ".join(items), "clinicians" in kinds, "imported" in kinds, "judges" in kinds,
                   "all" in kinds, frozenset(names))

    def __repr__(self) -> str:
        return f"Sources({self.text!r})"

    def __str__(self) -> str:
        return self.text

    def includes(self, role: str, username: str) -> bool:
        """Whether one annotator's judgments count (``role`` and ``username`` of its ``Annotator`` row)."""
        if self.everyone or username in self.names:
            return True
        if role in CLINICIAN_ROLES:
            return self.clinicians
        return role == SOURCE_ROLE and (self.judges if is_judge(username) else self.imported)

    def condition(self, role: Any = None, username: Any = None) -> Any:
        """``includes`` as a SQL ``WHERE`` term (a SQLAlchemy expression) on the ``annotator`` table's
        ``role`` and ``username`` columns (or the columns given, e.g. an alias's).

        >>> sql = lambda term: str(term.compile(compile_kwargs={"literal_binds": True}))
        >>> sql(Sources.parse("imported").condition())
        "annotator.role = 'source' AND (annotator.username NOT LIKE 'judge:' || '%')"
        >>> sql(Sources.parse("clinicians,judge:m").condition())
        "annotator.role IN ('clinician', 'lead', 'admin') OR annotator.username IN ('judge:m')"
        >>> sql(Sources.parse("judges").condition()), sql(Sources.parse("all").condition())
        ("annotator.role = 'source' AND (annotator.username LIKE 'judge:' || '%')", 'true')
        """
        from sqlalchemy import and_, false, or_, true

        if role is None or username is None:
            from db.models import Annotator

            columns = Annotator.__table__.c
            role, username = columns.role, columns.username
        if self.everyone:
            return true()
        judge = username.startswith(JUDGE_PREFIX)
        terms = []
        if self.clinicians:
            terms.append(role.in_(CLINICIAN_ROLES))
        if self.imported and self.judges:
            terms.append(role == SOURCE_ROLE)
        elif self.imported:
            terms.append(and_(role == SOURCE_ROLE, ~judge))
        elif self.judges:
            terms.append(and_(role == SOURCE_ROLE, judge))
        if self.names:
            terms.append(username.in_(sorted(self.names)))
        return or_(*terms) if terms else false()


#: Clinicians' judgments only: the default of every ``--sources``.
CLINICIANS = Sources.parse("clinicians")


def conversation(messages: Sequence[dict[str, Any]] | None, system: str | None,
                 keys: Sequence[str] | None = None) -> Messages:
    """The conversation so far as chat messages, led by the system message when there is one and the
    stored messages do not already start with one. Copies (only ``keys`` of each message when given);
    the input is not changed.

    >>> conversation([{"role": "user", "content": "hi"}], "Be kind.")
    [{'role': 'system', 'content': 'Be kind.'}, {'role': 'user', 'content': 'hi'}]
    >>> conversation([{"role": "system", "content": "Stored."}, {"role": "user", "content": "hi"}], "Other.")
    [{'role': 'system', 'content': 'Stored.'}, {'role': 'user', 'content': 'hi'}]
    >>> conversation(None, None)
    []
    >>> conversation([{"role": "user", "content": "hi", "name": "x"}], None, keys=("role", "content"))
    [{'role': 'user', 'content': 'hi'}]
    """
    turns = [dict(message) if keys is None else {key: message[key] for key in keys} for message in messages or []]
    if system and not (turns and turns[0].get("role") == "system"):
        return [{"role": "system", "content": system}, *turns]
    return turns


def prompt_conversation(prompt: Any) -> Messages:
    """``conversation`` of a stored ``Prompt`` (its ``messages`` and ``system_prompt``)."""
    return conversation(prompt.messages, prompt.system_prompt)


def majority_label(preferences: Iterable[str]) -> str | None:
    """The strict plurality label of a comparison's votes (``a``, ``b``, ``tie`` or ``both_bad``), or
    None when the top two are level (or there are no votes).

    >>> majority_label(["a", "a", "b"]), majority_label(["a", "b"]), majority_label(["tie", "tie", "a"])
    ('a', None, 'tie')
    >>> majority_label([]) is None
    True
    """
    return majority_of_counts(Counter(preferences))


def majority_of_counts(counts: Mapping[str, int]) -> str | None:
    """``majority_label`` for votes already counted per label (exports count them in SQL).

    >>> majority_of_counts({"a": 2, "b": 1}), majority_of_counts({"a": 1, "b": 1}), majority_of_counts({"a": 0})
    ('a', None, None)
    """
    # One pass, no sorting: exports call this once per comparison (a million times per export).
    leader, most, level = None, 0, False
    for label, count in counts.items():
        if count > most:
            leader, most, level = label, count, False
        elif count == most and count > 0:
            level = True
    return None if level else leader


def in_disagreement(judgments: Iterable[tuple[str, str, Sequence[str], Sequence[str]]]) -> bool:
    """Whether clinicians disagree on a comparison, so that it needs a lead's adjudication: among the
    clinicians' judgments (``(role, preferred, flags_a, flags_b)``; other roles, imported datasets and
    model judges, are left out) one prefers A and another B, or one flags a reply unsafe and another
    does not flag it.

    >>> in_disagreement([("clinician", "a", [], []), ("lead", "b", [], [])])
    True
    >>> in_disagreement([("clinician", "a", [], []), ("clinician", "tie", [], [])])
    False
    >>> in_disagreement([("clinician", "a", [], ["toxic"]), ("admin", "a", [], [])])
    True
    >>> in_disagreement([("clinician", "a", [], ["toxic"]), ("clinician", "a", [], ["dismissive"])])
    False
    >>> in_disagreement([("clinician", "a", [], []), ("source", "b", ["toxic"], [])])
    False
    >>> in_disagreement([("clinician", "a", ["toxic"], [])])
    False
    """
    preferences: set[str] = set()
    flagged: list[tuple[bool, bool]] = []
    for role, preferred, flags_a, flags_b in judgments:
        if role not in CLINICIAN_ROLES:
            continue
        preferences.add(preferred)
        flagged.append((bool(flags_a), bool(flags_b)))
    if {"a", "b"} <= preferences:
        return True
    return any(len({row[side] for row in flagged}) > 1 for side in (0, 1))


def reply_length(text: str) -> int:
    """The length the "longer reply wins" baseline compares: words (whitespace-separated), so that a
    reply's length does not depend on punctuation or markup.

    >>> reply_length("It sounds  exhausting.\\nWhat helps you?")
    6
    """
    return len(text.split())


def longer_side(text_a: str, text_b: str) -> str:
    """Which reply the length baseline prefers: ``a``, ``b``, or ``tie`` when equally long.

    >>> longer_side("one two three", "one"), longer_side("one", "one two"), longer_side("x y", "y z")
    ('a', 'b', 'tie')
    """
    gap = reply_length(text_a) - reply_length(text_b)
    return "a" if gap > 0 else ("b" if gap < 0 else "tie")


def id_range(part: str, option: str) -> range:
    """One item of an id list given on the command line (``7`` or ``3-9``), for ``option``'s messages.

    >>> list(id_range("7", "--prompts")), list(id_range(" 3-5", "--prompts"))
    ([7], [3, 4, 5])
    >>> id_range("3-x", "--comparisons")
    Traceback (most recent call last):
    ...
    ValueError: --comparisons: '3-x' is not an id or a range like 3-9
    >>> id_range("9-3", "--prompts")
    Traceback (most recent call last):
    ...
    ValueError: --prompts: bad range '9-3'
    """
    low, dash, high = part.strip().partition("-")
    try:
        start, end = int(low), int(high) if dash else int(low)
    except ValueError:
        raise ValueError(f"{option}: {part.strip()!r} is not an id or a range like 3-9") from None
    if start < 1 or end < start:
        raise ValueError(f"{option}: bad range {part.strip()!r}")
    return range(start, end + 1)


def parse_id_list(text: str, option: str = "--prompts") -> list[int]:
    """Ids from ``"1,3,7-9"`` (in the order given, each once).

    >>> parse_id_list("1, 3,7-9,3")
    [1, 3, 7, 8, 9]
    >>> parse_id_list(" , ")
    Traceback (most recent call last):
    ...
    ValueError: --prompts: no ids given
    """
    ids = [i for part in filter(None, (p.strip() for p in text.split(","))) for i in id_range(part, option)]
    if not ids:
        raise ValueError(f"{option}: no ids given")
    return list(dict.fromkeys(ids))
