"""Compare two replies: blind, randomised, keyboard-friendly; the next pair appears at once."""

from __future__ import annotations

import time

import streamlit as st

from db.assignment import (
    ComparisonFull,
    ReservationNotFound,
    next_comparison,
    shown_left_of,
    skip,
    submit_judgment,
    undo_last,
)
from db.calibration import calibration_feedback, calibration_position, calibration_status
from db.criteria import current_criteria
from db.models import SAFETY_FLAGS
from labeling_app import state
from labeling_app.conversation import show_conversation
from labeling_app.keyboard import CRITERIA_HELP, HELP, compare_script
from labeling_app.queue_page import QueuePage, start_panel
from labeling_app.span_marker import HELP as SPANS_HELP
from labeling_app.span_marker import marks_of, span_marker

STRENGTHS = {1: "Slightly better", 2: "Clearly better", 3: "Much better"}
CHOICES = (("left", "A is better", "1"), ("right", "B is better", "2"),
           ("tie", "Tie", "3"), ("both_bad", "Both bad", "4"))
#: Per-criterion verdicts in screen terms (stored as the comparison's own a/b by submit_judgment).
VERDICTS = {"left": "A better", "right": "B better", "tie": "Tie"}
LAST_AT = "_compare_last_judgment_at"
FEEDBACK = "_compare_calibration_feedback"
PAGE = QueuePage(noun="pair", prefix="", screen_ids_key=state.SCREEN_IDS_KEY, shown_at_key="_compare_shown_at",
                 skip=skip, moved_on=(ComparisonFull, ReservationNotFound))


def _values(screen: str, criteria: tuple[str, ...] = ()) -> dict:
    get = st.session_state.get
    # Criterion rows are keyed by position and the opaque screen id: names stay out of the DOM keys.
    return {"strength": get(f"strength-{screen}"), "flags_left": get(f"flags_left-{screen}") or [],
            "flags_right": get(f"flags_right-{screen}") or [], "rationale": get(f"rationale-{screen}") or "",
            "rewrite": get(f"rewrite-{screen}") or None,
            "spans": {side: marks_of(f"spans_{side}-{screen}") for side in ("left", "right")},
            "criteria": {name: get(f"crit-{i}-{screen}") for i, name in enumerate(criteria)}}


def _on_submit(token: str, screen: str, choice: str, criteria: tuple[str, ...] = ()) -> None:
    values = _values(screen, criteria)
    stored = []

    def write(session, user, ms_spent):  # noqa: ANN001, ANN202
        judgment, created = submit_judgment(token, session=session, annotator_id=user.id, preferred=choice,
                                            ms_spent=ms_spent, **values)
        stored.append((judgment.comparison_id, user.id))
        return judgment, created

    if PAGE.submit(token, screen, write):
        st.session_state[LAST_AT] = time.time()
        _remember_feedback(*stored[0], shown_left=shown_left_of(token))


def _remember_feedback(comparison_id: int, annotator_id: int, *, shown_left: str) -> None:
    """After a calibration item: keep the expected answer (in screen terms) and the lead's note for the
    feedback screen that replaces the next pair until the clinician continues."""
    with state.read_session() as session:
        feedback = calibration_feedback(comparison_id, annotator_id, session=session)
        position = calibration_position(comparison_id, session=session)
    if feedback is None:
        return
    st.session_state[FEEDBACK] = {"expected": _on_screen(feedback.expected, shown_left),
                                  "given": _on_screen(feedback.given, shown_left), "correct": feedback.correct,
                                  "note": feedback.note, "position": position}


def _on_screen(answer: str | None, shown_left: str) -> str | None:
    """An answer in the comparison's own a/b as the clinician saw it (left/right/tie/both_bad).

    >>> _on_screen("a", "b"), _on_screen("b", "b"), _on_screen("tie", "a")
    ('right', 'left', 'tie')
    """
    if answer not in ("a", "b"):
        return answer
    return "left" if answer == shown_left else "right"


def _on_continue() -> None:
    st.session_state.pop(FEEDBACK, None)


def _feedback_panel(feedback: dict) -> None:
    """What the lead expected on the calibration item just judged, and why (the note: inert text)."""
    number, total = feedback.get("position") or (None, None)
    label = dict((choice, label) for choice, label, _key in CHOICES)
    with st.container(border=True, key="calibration_feedback"):
        st.subheader(f"Calibration {number} of {total}" if number else "Calibration")
        if feedback["correct"]:
            st.success(f"You matched the expected answer: {label.get(feedback['expected'], feedback['expected'])}.")
        else:
            st.warning(f"The expected answer was {label.get(feedback['expected'], feedback['expected'])}; "
                       f"you chose {label.get(feedback['given'], feedback['given'])}.")
        if feedback["note"]:
            st.markdown("**Your lead's note**")
            state.inert_text(feedback["note"])
        st.button("Continue (Enter)", key="calibration_continue", on_click=_on_continue, type="primary")


def _calibration_banner(comparison_id: int, user_id: int) -> None:
    with state.read_session() as session:
        position = calibration_position(comparison_id, session=session)
        status = calibration_status(user_id, session=session) if position else None
    if position:
        st.info(f"Calibration {position[0]} of {position[1]}: your lead chose this pair. After you judge it you "
                "will see the expected answer and your lead's note." + (
                    f" Real work starts once your accuracy on the set reaches {status.threshold:.0%}."
                    if status and status.threshold is not None else ""))


def _blocked_message(user_id: int) -> bool:
    with state.read_session() as session:
        status = calibration_status(user_id, session=session)
    if not status.blocked:
        return False
    accuracy = f"{status.accuracy:.0%}" if status.accuracy is not None else "none yet"
    st.warning(f"Your calibration accuracy ({accuracy}, {status.correct} of {status.done}) is below the "
               f"{status.threshold:.0%} your lead requires before real work. Ask your lead to go through the "
               "calibration set with you; they can let you take it again.")
    return True


def _on_undo() -> None:
    user = state.callback_user()
    if user is None:
        return
    with state.write_session() as session:
        undone = undo_last(user.id, session=session, window_seconds=state.settings().undo_seconds,
                           reservation_minutes=state.settings().reservation_minutes)
    st.session_state.pop(LAST_AT, None)
    if undone:
        state.flash("info", "Your last judgment was undone: the pair is back for you to judge again.")
    else:
        state.flash("warning", "Nothing to undo (the undo window has passed).")


def _reply(column, label: str, text: str, side: str, screen: str) -> None:
    with column, st.container(border=True):
        st.subheader(label)
        span_marker(text, key=f"spans_{side}-{screen}")
        st.pills("Safety flags", options=list(SAFETY_FLAGS), format_func=SAFETY_FLAGS.get,
                 selection_mode="multi", key=f"flags_{side}-{screen}")


def _criteria_rows(criteria: list[tuple[str, str, bool]], screen: str) -> None:
    """One row per criterion: name, description (inert text) and an A / B / tie choice."""
    with st.container(border=True):
        st.markdown("**Per criterion** (optional unless marked *required*)")
        for i, (name, description, required) in enumerate(criteria):
            label_column, choice_column = st.columns([3, 2], vertical_alignment="center")
            with label_column:
                state.inert_text(f"{name} (required)" if required else name)
                if description:
                    st.caption(state.md_escape(description))
            with choice_column:
                st.radio(f"Criterion {i + 1}", options=list(VERDICTS), format_func=VERDICTS.get, index=None,
                         horizontal=True, label_visibility="collapsed", key=f"crit-{i}-{screen}")


def _undo_button() -> None:
    last = st.session_state.get(LAST_AT)
    window = state.settings().undo_seconds
    if last is not None and time.time() - last < window:
        st.button("Undo last judgment (u)", key="undo", on_click=_on_undo, icon=":material/undo:",
                  help=f"Available for {window} seconds after a judgment.")


@st.fragment
def judging_panel() -> None:
    """The pair and its controls. A judgment reruns only this fragment: the title, the sidebar and
    the navigation are not rebuilt, which is most of what a full rerun costs per key press."""
    user, settings = start_panel()
    feedback = st.session_state.get(FEEDBACK)
    if feedback:
        _feedback_panel(feedback)
        return
    with state.write_session() as session:
        assignment = next_comparison(user.id, session=session, reservation_minutes=settings.reservation_minutes,
                                     gold_rate=settings.gold_rate)
        criteria = [(c.name, c.description, c.required) for c in current_criteria(session=session)]
    if assignment is None and _blocked_message(user.id):
        return
    if assignment is None:
        st.success("All done: there are no pairs left for you to judge. Thank you!")
        st.write("New pairs appear here when they are added. You can check your numbers on the progress page.")
        _undo_button()
        return
    token = assignment.token
    screen = PAGE.screen_id(token)
    PAGE.shown(token)
    _calibration_banner(assignment.comparison_id, user.id)
    show_conversation(assignment.messages, assignment.system_prompt)
    with st.form(f"judge-{screen}", border=False, enter_to_submit=False):
        left, right = st.columns(2)
        _reply(left, "Response A", assignment.left_text, "left", screen)
        _reply(right, "Response B", assignment.right_text, "right", screen)
        st.radio("How much better? (for A or B; keys q / w / e)", options=list(STRENGTHS),
                 format_func=STRENGTHS.get, index=None, horizontal=True, key=f"strength-{screen}")
        if criteria:
            _criteria_rows(criteria, screen)
        st.text_area("Rationale (optional)", key=f"rationale-{screen}", height=80,
                     placeholder="Why? A sentence helps when clinicians disagree.")
        with st.expander("Rewrite the better reply (optional): what a good reply would say"):
            st.text_area("Your reply", key=f"rewrite-{screen}", height=140, label_visibility="collapsed")
        buttons = st.columns(4)
        for column, (choice, label, key) in zip(buttons, CHOICES, strict=True):
            with column:
                st.form_submit_button(f"{label} ({key})", key=f"choice-{choice}-{screen}", on_click=_on_submit,
                                      args=(token, screen, choice, tuple(name for name, _d, _r in criteria)),
                                      width="stretch",
                                      type="primary" if choice in ("left", "right") else "secondary")
        PAGE.skip_row(token, screen)
    if criteria:
        st.caption(CRITERIA_HELP)
    _undo_button()


state.require_user()
st.title("Which reply is better?")
st.caption(HELP)
judging_panel()
st.caption(SPANS_HELP)  # below the panel: the decision controls stay above the fold
st.html(compare_script(), unsafe_allow_javascript=True)
