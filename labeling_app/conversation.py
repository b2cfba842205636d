"""How a conversation is shown on every judging page (pairs, criteria, rankings): compactly, as text."""

from __future__ import annotations

import streamlit as st

from labeling_app import state

OPEN_TURNS = 3  # the last turns shown open: the patient's message and the exchange before it
LONG_RECENT_CHARS = 300  # beyond this the open turns scroll in a box of RECENT_HEIGHT_PX
RECENT_HEIGHT_PX = 220


def turn(message: dict) -> None:
    role = message.get("role", "user")
    with st.chat_message("user" if role == "user" else "assistant"):
        st.caption("Person" if role == "user" else "Assistant")
        state.inert_text(message.get("content", ""))


def show_conversation(messages: list[dict], system_prompt: str | None = None) -> None:
    """The conversation so far, compactly: earlier turns folded (one click shows them all), the
    last ``OPEN_TURNS`` open, in a box of bounded height once long, so that the two replies and the
    judging controls stay in view however long the conversation is."""
    if system_prompt:
        with st.expander("Assistant instructions (system prompt)"):
            state.inert_text(system_prompt)
    earlier, recent = messages[:-OPEN_TURNS], messages[-OPEN_TURNS:]
    if earlier:
        with st.expander(f"Earlier in the conversation ({len(earlier)} messages)"):
            for message in earlier:
                turn(message)
    long = sum(len(m.get("content", "")) for m in recent) > LONG_RECENT_CHARS
    with st.container(height=RECENT_HEIGHT_PX if long else "content", border=False, autoscroll=long or None):
        for message in recent:
            turn(message)
