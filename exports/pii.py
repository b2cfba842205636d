"""PII scrubbing for exported text: e-mail addresses, phone numbers, URLs and self-introduced or
signed names, replaced with placeholders; counts are kept per kind for the manifest.

Names are only recognised in the forms this data carries them ("My name is X", "I'm X," / "I am X.",
"call me X", and sign-offs such as "Best, X" or a last line "- X"); a free-standing name elsewhere in
a sentence is not detected (say so when sharing the data).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
URL = re.compile(
    r"\b(?:(?:https?://|www\.)[^\s<>\"')\]]+[^\s<>\"')\].,;:!?]"
    r"|[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|edu|gov|info|io|co\.uk|org\.uk)\b"
    r"(?:/[^\s<>\"')\]]*[^\s<>\"')\].,;:!?])?)",
    re.IGNORECASE,
)
PHONE = re.compile(
    r"(?<![\w+])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]?\d{3,4}[\s.-]?\d{3,4}(?![\w])"
)
_NAME = r"([A-Z][a-z]+(?:[ -][A-Z][a-z]+)?)"
# Words that follow "I'm" capitalised at a sentence start but are not names.
NOT_NAMES = frozenset("""
Sorry Fine Good Okay Ok Not So Just Really Very Here Happy Sad Tired Glad Afraid Scared Worried
Always Never Still Also Trying Going Feeling Getting Being Having Doing Done Sure Unsure Confused
Anxious Depressed Lonely Stressed Lost Stuck Angry Upset Alone Ready Well Better Worse Sick
A An The In On At From With Able Unable Only Constantly Currently Honestly Overwhelmed Crazy Weird Human
""".split())
INTRO = re.compile(
    rf"\b(?:[Mm]y name is|[Mm]y name's|[Cc]all me|I'm|I am|[Tt]his is)\s+{_NAME}(?=[,.!?;:]|\s*$|\s+and\b)"
)
SIGN_OFF = re.compile(
    rf"(?m)^((?:Best|Regards|Kind regards|Best regards|Warm regards|Sincerely|Thanks|Thank you|Cheers|Love)"
    rf",?\s*\n?\s*[-–—]?\s*){_NAME}\s*$"
)
DASH_SIGNATURE = re.compile(rf"(?m)^(\s*[-–—~]\s*){_NAME}\s*$")

PLACEHOLDERS = {"email": "[EMAIL]", "url": "[URL]", "phone": "[PHONE]", "name": "[NAME]"}


@dataclass
class Scrubber:
    r"""Replace PII in texts; ``counts`` says how many of each kind were replaced.

    >>> s = Scrubber()
    >>> s("Hi, I'm Dana, mail dana@x.org or call 555-123-4567, see https://x.org/a.")
    "Hi, I'm [NAME], mail [EMAIL] or call [PHONE], see [URL]."
    >>> dict(s.counts)
    {'email': 1, 'url': 1, 'phone': 1, 'name': 1}
    >>> s("I'm sorry, I'm Tired. My name is Jo Ann.")
    "I'm sorry, I'm Tired. My name is [NAME]."
    >>> s("Visit betterhelp.com/start or http://a.b/c?d=1.\nBest,\nMaria")
    'Visit [URL] or [URL].\nBest,\n[NAME]'
    >>> s("Call +44 20 7946 0958 today.\n- Dr Ruiz")
    'Call [PHONE] today.\n- [NAME]'
    >>> s("Hope this helps!\n— Jordan")
    'Hope this helps!\n— [NAME]'
    """

    counts: Counter = field(default_factory=Counter)

    def __call__(self, text: str) -> str:
        return self.scrub(text)

    def scrub(self, text: str, offsets: OffsetMap | None = None) -> str:
        """The scrubbed text; with ``offsets``, every replacement is recorded there, so that character
        offsets into ``text`` (unsafe spans) can be carried over to the result."""
        text = self._sub(EMAIL, "email", text, offsets)
        text = self._sub(URL, "url", text, offsets)
        text = self._sub(PHONE, "phone", text, offsets)
        return self._names(text, offsets)

    def scrub_spans(self, text: str, spans: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
        """Scrub ``text`` and carry ``[start, end)`` offsets over: a span boundary inside a replaced
        stretch moves to the placeholder's edge, so the span covers the whole placeholder.

        >>> Scrubber().scrub_spans("Mail me at jo@x.org now, loser.", [(0, 4), (11, 13), (25, 30)])
        ('Mail me at [EMAIL] now, loser.', [(0, 4), (11, 18), (24, 29)])
        """
        offsets = OffsetMap()
        scrubbed = self.scrub(text, offsets)
        return scrubbed, [(offsets.start(a), offsets.end(b)) for a, b in spans]

    def _sub(self, pattern: re.Pattern[str], kind: str, text: str, offsets: OffsetMap | None) -> str:
        edits = [(m.start(), m.end(), PLACEHOLDERS[kind]) for m in pattern.finditer(text)]
        self.counts[kind] += len(edits)
        return _apply(text, edits, offsets)

    def _names(self, text: str, offsets: OffsetMap | None) -> str:
        edits = []
        for match in INTRO.finditer(text):
            if match.group(1).split()[0].split("-")[0] not in NOT_NAMES:
                edits.append((match.start(1), match.end(0), PLACEHOLDERS["name"]))
        text = self._named(text, edits, offsets)
        for pattern in (SIGN_OFF, DASH_SIGNATURE):
            # The greeting or dash (group 1) stays; the name and trailing blanks become the placeholder.
            edits = [(m.end(1), m.end(0), PLACEHOLDERS["name"]) for m in pattern.finditer(text)
                     if m.group(2).split()[0] not in NOT_NAMES]
            text = self._named(text, edits, offsets)
        return text

    def _named(self, text: str, edits: list[tuple[int, int, str]], offsets: OffsetMap | None) -> str:
        self.counts["name"] += len(edits)
        return _apply(text, edits, offsets)

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Scrub the ``content`` of each chat message (other keys kept)."""
        return [{**m, "content": self(m["content"])} for m in messages]

    def report(self) -> dict[str, int]:
        """Counts per kind, every kind present (zero included).

        >>> Scrubber().report()
        {'email': 0, 'phone': 0, 'url': 0, 'name': 0}
        """
        return {kind: int(self.counts.get(kind, 0)) for kind in ("email", "phone", "url", "name")}


class OffsetMap:
    """Where positions of a text land after a sequence of replacement passes (the scrubber's).

    >>> m = OffsetMap()
    >>> _apply("call 555-1234 ok", [(5, 13, "[PHONE]")], m)
    'call [PHONE] ok'
    >>> [m.start(p) for p in (0, 5, 9, 13, 14)], [m.end(p) for p in (5, 9, 13, 16)]
    ([0, 5, 5, 12, 13], [5, 12, 12, 15])
    """

    def __init__(self) -> None:
        self.passes: list[list[tuple[int, int, int]]] = []

    def add(self, edits: list[tuple[int, int, str]]) -> None:
        if edits:
            self.passes.append([(a, b, len(new)) for a, b, new in edits])

    def start(self, position: int) -> int:
        """A start offset: inside a replaced stretch it moves to the placeholder's start."""
        for edits in self.passes:
            position = _moved(edits, position, end=False)
        return position

    def end(self, position: int) -> int:
        """An end offset: inside a replaced stretch (or at its end) it moves to the placeholder's end."""
        for edits in self.passes:
            position = _moved(edits, position, end=True)
        return position


def _moved(edits: list[tuple[int, int, int]], position: int, *, end: bool) -> int:
    delta = 0
    for a, b, n in edits:
        if (position <= a) if end else (position < a):
            break
        if (position <= b) if end else (position < b):
            return a + delta + (n if end else 0)
        delta += n - (b - a)
    return position + delta


def _apply(text: str, edits: list[tuple[int, int, str]], offsets: OffsetMap | None) -> str:
    """Replace non-overlapping ``(start, end, new)`` stretches (in order) and record them in ``offsets``."""
    if not edits:
        return text
    if offsets is not None:
        offsets.add(edits)
    pieces, last = [], 0
    for a, b, new in edits:
        pieces += [text[last:a], new]
        last = b
    return "".join(pieces) + text[last:]
