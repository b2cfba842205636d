"""Rank K replies best first (ties allowed): blind, position-randomised per clinician, by keyboard
(the replies' numbers in order, ``=`` for a tie, Backspace, Enter) or by mouse; the next task at once.

The ranking being built lives in this browser session (screen numbers only); the library
(``db.rankings``) maps screen numbers to replies on submit, as the compare page's library does.
"""

from __future__ import annotations

import streamlit as st

from db.models import SAFETY_FLAGS
from db.rankings import (
    RankingNotReserved,
    RankingTaskFull,
    describe_tiers,
    next_ranking,
    skip_ranking,
    submit_ranking,
)
from labeling_app import state
from labeling_app.conversation import show_conversation
from labeling_app.keyboard import RANK_HELP, rank_script
from labeling_app.queue_page import QueuePage, start_panel
from labeling_app.span_marker import HELP as SPANS_HELP
from labeling_app.span_marker import marks_of, span_marker

ORDINALS = ("1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th", "9th")
COLUMNS = 4  # replies side by side; more than this wrap onto a second row


def _tiers(screen: str) -> list[list[int]]:
    return st.session_state.setdefault(f"_rank_tiers-{screen}", [])


def _tie_pending(screen: str) -> bool:
    return bool(st.session_state.get(f"_rank_tie-{screen}"))


def _placed(screen: str) -> set[int]:
    return {n for tier in _tiers(screen) for n in tier}


def _next_place(screen: str) -> str:
    """How the next pick will be placed, e.g. "2nd" or "tie for 1st"."""
    tiers = _tiers(screen)
    if _tie_pending(screen) and tiers:
        return f"tie for {ORDINALS[sum(len(t) for t in tiers[:-1])]}"
    return ORDINALS[min(len(_placed(screen)), len(ORDINALS) - 1)]


def _on_pick(screen: str, number: int) -> None:
    if state.callback_user() is None or number in _placed(screen):
        return
    tiers = _tiers(screen)
    if _tie_pending(screen) and tiers:
        tiers[-1].append(number)
    else:
        tiers.append([number])
    st.session_state[f"_rank_tie-{screen}"] = False


def _on_tie(screen: str, k: int) -> None:
    if state.callback_user() is not None and _tiers(screen) and len(_placed(screen)) < k:
        st.session_state[f"_rank_tie-{screen}"] = True


def _on_back(screen: str) -> None:
    if state.callback_user() is None:
        return
    if _tie_pending(screen):
        st.session_state[f"_rank_tie-{screen}"] = False
        return
    tiers = _tiers(screen)
    if tiers:
        tiers[-1].pop()
        if not tiers[-1]:
            tiers.pop()


def _clear(screen: str) -> None:
    for key in (f"_rank_tiers-{screen}", f"_rank_tie-{screen}"):
        st.session_state.pop(key, None)


PAGE = QueuePage(noun="ranking", prefix="rank_", screen_ids_key="_rank_screen_ids", shown_at_key="_rank_shown_at",
                 skip=skip_ranking, moved_on=(RankingTaskFull, RankingNotReserved), clear=_clear)


def _on_submit(token: str, screen: str, k: int) -> None:
    if state.callback_user() is None:
        return
    if len(_placed(screen)) < k:
        state.flash("warning", f"Rank all {k} replies first.")
        return
    tiers = [list(t) for t in _tiers(screen)]
    flags = {n: st.session_state.get(f"rank_flags_{n}-{screen}") or [] for n in range(1, k + 1)}
    rationale = st.session_state.get(f"rank_rationale-{screen}") or ""
    spans = {n: marks_of(f"rank_spans_{n}-{screen}") for n in range(1, k + 1)}
    PAGE.submit(token, screen, lambda session, user, ms_spent: submit_ranking(
        token, tiers, session=session, annotator_id=user.id, flags=flags, rationale=rationale, ms_spent=ms_spent,
        spans=spans))


def _place_of(screen: str, number: int) -> str | None:
    """"1st", "tied 2nd"… for a placed reply (screen numbers only), else None."""
    before = 0
    for tier in _tiers(screen):
        if number in tier:
            return ("tied " if len(tier) > 1 else "") + ORDINALS[before]
        before += len(tier)
    return None


def _reply(number: int, text: str, screen: str) -> None:
    with st.container(border=True):
        place = _place_of(screen, number)
        st.subheader(f"Reply {number}")
        span_marker(text, key=f"rank_spans_{number}-{screen}")
        st.form_submit_button(f"Rank {_next_place(screen)} ({number})" if place is None else f"Ranked {place}",
                              key=f"rank_pick_{number}-{screen}", on_click=_on_pick, args=(screen, number),
                              disabled=place is not None, width="stretch", type="primary")
        # A one-line multiselect, not the compare page's pills: K narrow columns must stay short.
        st.multiselect("Safety flags", options=list(SAFETY_FLAGS), format_func=SAFETY_FLAGS.get,
                       key=f"rank_flags_{number}-{screen}", placeholder="Safety flags (optional)",
                       label_visibility="collapsed")


@st.fragment
def ranking_panel() -> None:
    """The task and its controls; each step reruns only this fragment (as on the compare page)."""
    user, settings = start_panel()
    with state.write_session() as session:
        assignment = next_ranking(user.id, session=session, reservation_minutes=settings.reservation_minutes)
    if assignment is None:
        st.success("All done: there are no rankings left for you. Thank you!")
        st.write("New ranking tasks appear here when they are added (`therapref pairs --k 3`).")
        return
    token, k = assignment.token, assignment.k
    screen = PAGE.screen_id(token)
    PAGE.shown(token)
    show_conversation(assignment.messages, assignment.system_prompt)
    with st.form(f"rank-{screen}", border=False, enter_to_submit=False):
        for start in range(0, k, COLUMNS):
            numbers = range(start + 1, min(k, start + COLUMNS) + 1)
            for column, number in zip(st.columns(min(k, COLUMNS)), numbers, strict=False):
                with column:
                    _reply(number, assignment.texts[number - 1], screen)
        tiers = _tiers(screen)
        summary = describe_tiers(tiers) if tiers else "nothing yet"
        pending = " =" if _tie_pending(screen) else ""
        st.text(f"Your ranking (best first): {summary}{pending}  ·  {len(_placed(screen))} of {k} ranked")
        tie, back, submit = st.columns(3)
        with tie:
            st.form_submit_button("Tie with the previous (=)", key=f"rank_tie-{screen}", on_click=_on_tie,
                                  args=(screen, k), width="stretch", disabled=not tiers or len(_placed(screen)) == k)
        with back:
            st.form_submit_button("Undo last step (Backspace)", key=f"rank_back-{screen}", on_click=_on_back,
                                  args=(screen,), width="stretch", disabled=not tiers)
        with submit:
            st.form_submit_button("Submit ranking (Enter)", key=f"rank_submit-{screen}", on_click=_on_submit,
                                  args=(token, screen, k), width="stretch", type="primary",
                                  disabled=len(_placed(screen)) < k)
        st.text_area("Rationale (optional)", key=f"rank_rationale-{screen}", height=68,
                     placeholder="Why this order? A sentence helps when clinicians disagree.")
        PAGE.skip_row(token, screen)


state.require_user()
st.title("Rank the replies, best first")
st.caption(RANK_HELP)
ranking_panel()
st.caption(SPANS_HELP)  # below the panel: the decision controls stay above the fold
st.html(rank_script(), unsafe_allow_javascript=True)
