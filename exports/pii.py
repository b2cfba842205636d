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
        text = self._sub(EMAIL, "email", text)
        text = self._sub(URL, "url", text)
        text = self._sub(PHONE, "phone", text)
        text = self._names(text)
        return text

    def _sub(self, pattern: re.Pattern[str], kind: str, text: str) -> str:
        text, n = pattern.subn(PLACEHOLDERS[kind], text)
        self.counts[kind] += n
        return text

    def _names(self, text: str) -> str:
        def intro(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.split()[0].split("-")[0] in NOT_NAMES:
                return match.group(0)
            self.counts["name"] += 1
            return match.group(0)[: match.start(1) - match.start(0)] + PLACEHOLDERS["name"]

        def signed(match: re.Match[str]) -> str:
            if match.group(2).split()[0] in NOT_NAMES:
                return match.group(0)
            self.counts["name"] += 1
            return match.group(1) + PLACEHOLDERS["name"]

        text = INTRO.sub(intro, text)
        text = SIGN_OFF.sub(signed, text)
        return DASH_SIGNATURE.sub(signed, text)

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Scrub the ``content`` of each chat message (other keys kept)."""
        return [{**m, "content": self(m["content"])} for m in messages]

    def report(self) -> dict[str, int]:
        """Counts per kind, every kind present (zero included).

        >>> Scrubber().report()
        {'email': 0, 'phone': 0, 'url': 0, 'name': 0}
        """
        return {kind: int(self.counts.get(kind, 0)) for kind in ("email", "phone", "url", "name")}
