"""Leads: disputed comparisons, oldest first. The conversation, both replies as the comparison's own
A and B (not blinded) with the words clinicians marked unsafe, every clinician's judgment with its
rationale and flags (names included: this page is for leads and admins only), and a form for the
final label; keys as on the compare page."""

from __future__ import annotations

import streamlit as st

from db.adjudication import AdjudicationError, Dispute, adjudication_queue, dispute, record_adjudication
from db.models import SAFETY_FLAGS
from db.spans import StoredSpan, spans_for_comparison
from labeling_app import state
from labeling_app.conversation import show_conversation
from labeling_app.keyboard import ADJUDICATE_HELP, adjudicate_script

STRENGTHS = {1: "Slightly better", 2: "Clearly better", 3: "Much better"}
#: (widget key part, stored preference, button label, key): widget keys ``adj_choice-<part>-<screen>``,
#: driven by this page's shortcut map (labeling_app.keyboard.ADJUDICATE_SHORTCUTS).
CHOICES = (("left", "a", "A is better", "1"), ("right", "b", "B is better", "2"),
           ("tie", "tie", "Tie", "3"), ("both_bad", "both_bad", "Both bad", "4"))
PREFERRED = {"a": "A better", "b": "B better", "tie": "Tie", "both_bad": "Both bad"}


def _flags(flags: tuple[str, ...]) -> str:
    return ", ".join(SAFETY_FLAGS.get(f, f) for f in flags) or "none"


def _on_submit(comparison_id: int, screen: str, preferred: str) -> None:
    user = state.callback_user()
    if user is None:
        return
    get = st.session_state.get
    try:
        with state.write_session() as session:
            record_adjudication(comparison_id, session=session, lead_id=user.id, preferred=preferred,
                                strength=get(f"adj_strength-{screen}") if preferred in ("a", "b") else None,
                                flags_a=get(f"adj_flags_left-{screen}") or [],
                                flags_b=get(f"adj_flags_right-{screen}") or [],
                                note=get(f"adj_note-{screen}") or "")
    except AdjudicationError as exc:
        state.flash("warning", state.md_escape(str(exc).capitalize()) + ".")
        return
    state.flash("success", f"Comparison {comparison_id} adjudicated: {PREFERRED[preferred]}.")


def _reply(column, label: str, text: str, side: str, screen: str, spans: list[StoredSpan]) -> None:
    with column, st.container(border=True):
        st.subheader(label)
        state.inert_text(text)
        if spans:
            # The words clinicians marked unsafe, quoted as plain text (never HTML), with who marked them.
            st.caption(f"Unsafe words marked ({len(spans)})")
            st.text("\n".join(f"“{span.quote}” ({span.start}–{span.end}): {SAFETY_FLAGS.get(span.flag, span.flag)}"
                              f" · {span.username}" for span in spans))
        st.pills("Final safety flags", options=list(SAFETY_FLAGS), format_func=SAFETY_FLAGS.get,
                 selection_mode="multi", key=f"adj_flags_{side}-{screen}")


def _judgments(view: Dispute) -> None:
    st.subheader(f"Judgments ({len(view.judgments)})")
    majority = view.majority
    st.caption(f"Clinicians' majority: {PREFERRED[majority] if majority else 'none (split)'}")
    columns = st.columns(min(len(view.judgments), 3) or 1)
    for i, judgment in enumerate(view.judgments):
        with columns[i % len(columns)], st.container(border=True):
            shown = judgment.display_name != judgment.annotator
            name = f"**{state.md_escape(judgment.display_name)}** · " if shown else ""
            st.markdown(f"{name}**{state.md_escape(judgment.annotator)}** · {judgment.role}")
            strength = f" ({STRENGTHS[judgment.strength].lower()})" if judgment.strength in STRENGTHS else ""
            st.text(f"{PREFERRED.get(judgment.preferred, judgment.preferred)}{strength}\n"
                    f"Flags on A: {_flags(judgment.flags_a)}\nFlags on B: {_flags(judgment.flags_b)}")
            st.caption("Rationale")
            state.inert_text(judgment.rationale or "(none)")
            if judgment.rewrite:
                with st.expander("Rewrite"):
                    state.inert_text(judgment.rewrite)


def adjudication_panel() -> None:
    with state.read_session() as session:
        queue = adjudication_queue(session=session)
        view = dispute(queue[0], session=session) if queue else None
        spans = spans_for_comparison(view.comparison_id, session=session) if view else []
    if view is None:
        st.success("No disputed pairs are waiting for adjudication.")
        return
    st.caption(f"{len(queue)} disputed pair(s) waiting, oldest first. Comparison {view.comparison_id}.")
    screen = f"c{view.comparison_id}"
    show_conversation(view.messages, view.system_prompt)
    with st.form(f"adj_form-{screen}", border=False, enter_to_submit=False):
        left, right = st.columns(2)
        _reply(left, "Response A", view.text_a, "left", screen, [s for s in spans if s.side == "a"])
        _reply(right, "Response B", view.text_b, "right", screen, [s for s in spans if s.side == "b"])
        _judgments(view)
        st.subheader("Final label")
        st.radio("How much better? (for A or B; keys q / w / e)", options=list(STRENGTHS),
                 format_func=STRENGTHS.get, index=None, horizontal=True, key=f"adj_strength-{screen}")
        st.text_area("Note (why this is the final label)", key=f"adj_note-{screen}", height=80)
        buttons = st.columns(4)
        for column, (suffix, preferred, label, key) in zip(buttons, CHOICES, strict=True):
            with column:
                st.form_submit_button(f"{label} ({key})", key=f"adj_choice-{suffix}-{screen}", on_click=_on_submit,
                                      args=(view.comparison_id, screen, preferred), width="stretch",
                                      type="primary" if preferred in ("a", "b") else "secondary")


state.require_adjudicator()
st.title("Adjudicate disputed pairs")
st.caption(ADJUDICATE_HELP)
state.show_flash()
adjudication_panel()
st.html(adjudicate_script(), unsafe_allow_javascript=True)
