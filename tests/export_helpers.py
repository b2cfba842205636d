"""A small, fully specified database for export tests (every vote chosen by hand)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from db.crud import (
    add_comparison,
    add_guideline_version,
    add_judgment,
    add_response,
    get_or_create_candidate,
    get_or_create_prompt,
    get_or_create_source_annotator,
)
from db.models import Annotator

SYSTEM = "You are a warm, careful therapy assistant."


@dataclass
class Scenario:
    prompts: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def build_scenario(session: Session) -> Scenario:
    """Five prompts, three candidates (warm, terse, risky), three clinicians, one imported source.

    - P1 (system): warm W1 beats terse T1 2–1; risky K1 beats T1 3–0 but clin2 flags K1 unsafe.
    - P2 (no system): W2 vs T2: one vote warm, one tie.
    - P3: W3 vs T3 one-one; clin0 writes a rewrite (with an e-mail address in it).
    - P4: only the imported source judged: it prefers T4.
    - P5: W5 vs T5: two "both bad", one warm.
    """
    sc = Scenario()
    add_guideline_version("Prefer safe, empathic, specific replies.", session=session)
    add_guideline_version("v2: also penalise advice without questions.", session=session)
    warm, _ = get_or_create_candidate("warm", session=session, provider="local", model_id="warm-model")
    terse, _ = get_or_create_candidate("terse", session=session, provider="local", model_id="terse-model")
    risky, _ = get_or_create_candidate("risky", session=session, provider="local", model_id="risky-model")
    # Clinicians without passwords (argon2 hashing is slow and irrelevant to exports).
    clin = [Annotator(username=f"clin{i}", role="clinician", credential="LCSW") for i in range(3)]
    session.add_all(clin)
    session.flush()
    hh = get_or_create_source_annotator("hh", session=session)

    def prompt(key: str, text: str, system: str | None):
        p, _ = get_or_create_prompt(user(text), session=session, system_prompt=system, source="test")
        sc.prompts[key] = user(text)
        return p

    def reply(p, cand, key: str, text: str):
        r, _ = add_response(p, cand, text, session=session)
        sc.texts[key] = text
        return r

    def judge(r1, r2, votes, **extra):
        comp, _ = add_comparison(r1, r2, session=session)
        for annotator, winner, kw in votes:
            if winner in ("tie", "both_bad"):
                pref = winner
            else:
                pref = "a" if comp.response_a_id == winner.id else "b"
            flags = kw.pop("flags_for", None)
            if flags is not None:
                side = "flags_a" if comp.response_a_id == flags[0].id else "flags_b"
                kw[side] = flags[1]
            add_judgment(comp, annotator, pref, session=session, guideline_version=kw.pop("gv", 1), **kw)
        return comp

    p1 = prompt("P1", "I can't sleep and I feel on edge.", SYSTEM)
    w1 = reply(p1, warm, "W1", "That sounds exhausting. What is on your mind at night?")
    t1 = reply(p1, terse, "T1", "Try melatonin.")
    k1 = reply(p1, risky, "K1", "Just take a few of your partner's sleeping pills.")
    judge(w1, t1, [(clin[0], w1, {}), (clin[1], w1, {"gv": 2}), (clin[2], t1, {})])
    judge(k1, t1, [(clin[0], k1, {}), (clin[1], k1, {}),
                   (clin[2], k1, {"flags_for": (k1, ["harmful_advice"])})])
    p2 = prompt("P2", "My partner says I'm too sensitive.", None)
    w2 = reply(p2, warm, "W2", "It hurts to hear that. What happened?")
    t2 = reply(p2, terse, "T2", "Maybe you are.")
    judge(w2, t2, [(clin[0], w2, {}), (clin[1], "tie", {})])
    p3 = prompt("P3", "I failed my exam and I feel worthless.", SYSTEM)
    w3 = reply(p3, warm, "W3", "Failing an exam does not make you worthless.")
    t3 = reply(p3, terse, "T3", "Study harder next time.")
    sc.texts["REWRITE"] = ("One exam does not define you. If you want, write to me at help@example.org "
                           "and tell me what the exam meant to you.")
    judge(w3, t3, [(clin[0], w3, {"rewrite": sc.texts["REWRITE"]}), (clin[1], t3, {})])
    p4 = prompt("P4", "Work is piling up.", SYSTEM)
    w4 = reply(p4, warm, "W4", "That sounds like a lot. What feels most urgent?")
    t4 = reply(p4, terse, "T4", "Make a list.")
    judge(w4, t4, [(hh, t4, {"gv": None})])
    p5 = prompt("P5", "I keep replaying an argument.", SYSTEM)
    w5 = reply(p5, warm, "W5", "Arguments can echo. I'm Sam, call 555-123-4567.")
    t5 = reply(p5, terse, "T5", "Forget it.")
    judge(w5, t5, [(clin[0], "both_bad", {}), (clin[1], "both_bad", {}), (clin[2], w5, {})])
    session.commit()
    return sc


def conv(sc: Scenario, key: str, system: str | None = SYSTEM) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + sc.prompts[key]


def asst(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]
