"""Keyboard shortcuts of the labeling pages: each page's key map, its help line, and the one static
script that acts on them (``labeling_app/static/keyboard.js``; never any untrusted text).

Compare page: 1 A better, 2 B better, 3 tie, 4 both bad, q/w/e strength slightly/clearly/much, s skip,
u undo; per-criterion rows: z A better, x tie, c B better on the current row, j/k next/previous row.
Ranking page: the replies' numbers 1..K in order of preference (best first), ``=`` then a number ties
that reply with the previous one, Backspace takes back the last step, Enter submits, ``s`` skips.
Adjudication page: the compare page's 1-4 and q/w/e on its own widget keys ``adj_…``.
Keys are ignored while typing in a text field or with a modifier key held, and wherever their page's
widgets are absent (both pages' listeners may live in one window after navigating: the compare
page's widget keys are ``choice-…``/``skip-…``, the ranking page's ``rank_…``, the adjudication page's ``adj_…``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

ASSET = Path(__file__).resolve().parent / "static" / "keyboard.js"

#: Compare page: key (as ``event.key.toLowerCase()``) → ("click", widget key) or ("radio", widget key, option).
SHORTCUTS = {
    "1": ("click", "choice-left"),
    "2": ("click", "choice-right"),
    "3": ("click", "choice-tie"),
    "4": ("click", "choice-both_bad"),
    "q": ("radio", "strength", 0),
    "w": ("radio", "strength", 1),
    "e": ("radio", "strength", 2),
    "s": ("click", "skip"),
    "u": ("click", "undo"),
    "enter": ("click", "calibration_continue"),  # after a calibration item: the feedback screen
}

HELP = "Keys: **1** A better · **2** B better · **3** tie · **4** both bad · " \
       "**q/w/e** slightly/clearly/much · **s** skip · **u** undo"

#: Compare page, criterion rows (widget keys "crit-<row>-<screen id>"): key → ("verdict", option index
#: of the row's radio: 0 A better, 1 B better, 2 tie) or ("move", ±1).
CRITERION_KEYS = {
    "z": ("verdict", 0),
    "x": ("verdict", 2),
    "c": ("verdict", 1),
    "j": ("move", 1),
    "k": ("move", -1),
}

CRITERIA_HELP = ("Criteria: the outlined row is the current one · **z** A better · **x** tie · **c** B better "
                 "(then the next row) · **j/k** next/previous row without judging")

#: Ranking page: key → ("click", widget key of the button).
RANK_SHORTCUTS = {
    **{str(n): ("click", f"rank_pick_{n}") for n in range(1, 10)},
    "=": ("click", "rank_tie"),
    "backspace": ("click", "rank_back"),
    "enter": ("click", "rank_submit"),
    "s": ("click", "rank_skip"),
}

#: Adjudication page: the compare page's keys on its own widget keys (``adj_…``), so that the compare
#: page's listener, alive in the same window after navigating, never fires here, nor this one there.
ADJUDICATE_SHORTCUTS = {key: (action[0], f"adj_{action[1]}", *action[2:])
                        for key, action in SHORTCUTS.items() if key not in ("s", "u")}

ADJUDICATE_HELP = "Keys: **1** A better · **2** B better · **3** tie · **4** both bad · " \
                  "**q/w/e** slightly/clearly/much (the final label)"

RANK_HELP = ("Keys: press the replies' numbers best first · **=** then a number: tie with the previous · "
             "**Backspace** undo the last step · **Enter** submit · **s** skip")


@cache
def _asset() -> str:
    return ASSET.read_text(encoding="utf-8")


def script(name: str, keys: dict, rows: dict | None = None) -> str:
    """A page's ``<script>`` for ``st.html(..., unsafe_allow_javascript=True)``: the static asset and
    one call with the page's key map (``rows``: criterion-style rows, ``{"prefix", "keys"}``).

    Streamlit's sanitizer (DOMPurify) silently drops a script whose text contains anything that
    looks like a tag, so the body must stay free of angle brackets:

    >>> body = script("demo", {"1": ("click", "go")}).split("<script>")[1].split("</script>")[0]
    >>> "<" in body or ">" in body, 'theraprefKeys({"name": "demo"' in body
    (False, True)
    """
    config = json.dumps({"name": name, "keys": keys, **({"rows": rows} if rows else {})})
    body = f"{_asset()}\ntheraprefKeys({config});\n"
    if "<" in body or ">" in body:
        raise ValueError("a shortcut script must hold no angle brackets (the sanitizer would drop it)")
    return f"<script>\n{body}</script>\n"


def compare_script() -> str:
    """The compare page's shortcuts and its criterion rows.

    >>> set(CRITERION_KEYS) & set(SHORTCUTS)
    set()
    >>> '"u": ["click", "undo"]' in compare_script() and '"prefix": "crit"' in compare_script()
    True
    """
    return script("compare", SHORTCUTS, {"prefix": "crit", "keys": CRITERION_KEYS})


def rank_script() -> str:
    """The ranking page's shortcuts.

    >>> '"=": ["click", "rank_tie"]' in rank_script() and '"3": ["click", "rank_pick_3"]' in rank_script()
    True
    """
    return script("rank", RANK_SHORTCUTS)


def adjudicate_script() -> str:
    """The adjudication page's shortcuts.

    >>> '"2": ["click", "adj_choice-right"]' in adjudicate_script() and '"s"' not in adjudicate_script()
    True
    """
    return script("adjudicate", ADJUDICATE_SHORTCUTS)
