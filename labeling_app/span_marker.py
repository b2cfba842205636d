"""The span marker (``labeling_app/static/span_marker.js``, Streamlit components v2): a reply's text,
inert, in which a clinician marks the words that make it unsafe with a flag kind, by mouse or keyboard.
The compare and ranking pages show each reply through it; the marks go to ``db.spans`` with the
judgment or ranking (offsets into the stored text, code points).

Keyboard, while the text has the focus (Tab): ←/→ move by word, Shift+←/→ extend, Home/End, a flag
kind's letter (``FLAG_LETTERS``) marks the selection, Delete/Backspace removes the marks under it, Esc
leaves. The page's own shortcuts wait while the text has the focus.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import streamlit as st

from db.models import SAFETY_FLAGS

STATIC = Path(__file__).resolve().parent / "static"
#: A letter per flag kind (none of the pages' own shortcut keys; they wait while marking anyway).
FLAG_LETTERS = {"misses_risk": "r", "harmful_advice": "h", "dismissive": "d", "toxic": "t", "boundary": "b",
                "factual_error": "f"}
HELP = ("Unsafe words: select them (the mouse, or Tab to a reply then **←/→**, **Shift+←/→**), then a kind's "
        "button or letter · **Delete** removes · **Esc** leaves")


@cache
def _component() -> Any:
    return st.components.v2.component(
        "therapref_span_marker", js=(STATIC / "span_marker.js").read_text(encoding="utf-8"), isolate_styles=False)


@cache
def _css() -> str:
    # Handed to the script, which adds it as a <style> element (inline css= is not applied without a shadow root).
    return (STATIC / "span_marker.css").read_text(encoding="utf-8")


def _noop() -> None:
    """State changes need no rerun: the marks are read when the judgment is submitted."""


def span_marker(text: str, *, key: str) -> None:
    """Show ``text`` (untrusted, inert) with its span marker; the marks live under ``key``."""
    flags = [[flag, label, FLAG_LETTERS[flag]] for flag, label in SAFETY_FLAGS.items()]
    _component()(data={"text": text or "", "flags": flags, "spans": marks_of(key) or None, "css": _css()}, key=key,
                 default={"spans": []}, on_spans_change=_noop, isolate_styles=False)


def marks_of(key: str) -> list[dict[str, Any]]:
    """The marks under ``key`` as ``[{"start", "end", "flag"}, …]`` (code point offsets)."""
    state = st.session_state.get(key)
    spans = state.get("spans") if hasattr(state, "get") else None
    return [dict(s) for s in spans or [] if isinstance(s, dict)]
