"""Pure rules over the data model that every area shares (one definition each, imported everywhere).

Who counts as a clinician, a prompt's conversation as the chatbot sees it, the majority of a
comparison's votes, and the reply length that the "longer reply wins" baseline compares. They live
in ``db`` because every area (reward, exports, analytics, candidates, the app) may import ``db`` and
nothing else below it; see ``docs/architecture.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Roles whose judgments are clinicians' (admins are lead clinicians); ``source`` rows are imported
#: datasets and ``judge:<name>`` annotators are models, never counted as clinicians unless asked.
CLINICIAN_ROLES: tuple[str, ...] = ("clinician", "admin")
#: Usernames of model judges' source annotators (``judge:<name>``; role ``source``).
JUDGE_PREFIX = "judge:"

Messages = list[dict[str, Any]]


def is_judge(username: str) -> bool:
    """Whether an annotator is a model judge (``judge:<name>``), not a person or an imported dataset.

    >>> is_judge("judge:gpt-4o"), is_judge("import:hh"), is_judge("dr.lee")
    (True, False, False)
    """
    return username.startswith(JUDGE_PREFIX)


def source_selected(role: str, username: str, sources: str) -> bool:
    """Whether one annotator's judgments count under a ``--sources`` choice (comma-separated items):
    ``clinicians`` (roles clinician/admin), ``imported`` (datasets ``import:*``), ``judges`` (all
    ``judge:*``), ``both`` (clinicians and imported), ``all`` (everyone), or one annotator's name
    (``judge:NAME``, ``import:DATASET``). Judges count only when asked for by name, ``judges`` or ``all``.

    >>> source_selected("clinician", "dr.lee", "clinicians"), source_selected("source", "judge:m", "both")
    (True, False)
    >>> source_selected("source", "judge:m", "judges"), source_selected("source", "judge:m", "clinicians,judge:m")
    (True, True)
    >>> source_selected("source", "import:hh", "imported"), source_selected("source", "judge:m", "imported")
    (True, False)
    """
    person = role in CLINICIAN_ROLES
    for item in (s.strip() for s in sources.split(",")):
        if item == "all" or item == username:
            return True
        if item in ("clinicians", "both") and person:
            return True
        if item in ("imported", "both") and not person and not is_judge(username):
            return True
        if item == "judges" and not person and is_judge(username):
            return True
    return False


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
