"""Every small real database the tests build: prompts, candidates, comparisons and judgments.

- ``add_prompts``: patient messages only.
- ``build_project``: those prompts × two candidates ("warm", "terse"), one comparison each, an admin
  and clinicians; optionally every clinician's judgment.
- ``make_database``: a migrated database at a URL holding ``build_project`` (plus, optionally, one pair
  with a hostile HTML reply), for the labeling-app tests.
- ``build_rich_project``: ``build_project`` plus everything a report shows (hostile names, ties, flags…).
- ``build_scenario``: a hand-specified database for the export tests (every vote chosen by hand).
- ``build_judged_pool``: comparisons with chosen clinicians' labels and a judge's verdicts (the gate's
  tests and ``bench/gate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session

from db.auth import create_annotator
from db.crud import (
    add_comparison,
    add_judgment,
    add_response,
    get_or_create_candidate,
    get_or_create_prompt,
    get_or_create_source_annotator,
)
from db.engine import make_engine
from db.guidelines import add_guideline_version
from db.judges import judge_annotator, record_verdict
from db.migrate import upgrade
from db.models import Annotator, CandidateModel, Comparison, Prompt, Response

PASSWORD = "correct-horse-battery"
SYSTEM = "You are a warm, careful therapy assistant."
PATIENT_MESSAGES = [
    "I haven't been sleeping and I feel on edge all the time.",
    "My partner says I'm too sensitive. Am I?",
    "I failed my exam and I feel worthless.",
    "Work is piling up and I can't bring myself to start anything.",
    "I keep replaying an argument with my mother.",
    "Some days I don't see the point of getting up.",
]
XSS_REPLY = ("Here is a thought.\n<script>window.__xss = 1;</script>\n"
             "<img src=x onerror=\"window.__xss = 2\">\n**not bold** [not a link](http://example.com)")
HOSTILE_NAME = "<script>alert('name')</script>"
HOSTILE_REPLY = "Try this <img src=x onerror=alert('reply')> **now** [link](http://example.com)"


def user(text: str) -> list[dict[str, str]]:
    """A one-message conversation from the patient."""
    return [{"role": "user", "content": text}]


# --- Prompts only ---------------------------------------------------------------------------------


def add_prompts(session: Session, n: int = 3, *, texts: list[str] | None = None, system: str | None = SYSTEM,
                source: str = "test") -> list[Prompt]:
    """The first ``n`` of ``texts`` (default: ``PATIENT_MESSAGES``) as prompts; committed."""
    prompts = []
    for text in (texts or PATIENT_MESSAGES)[:n]:
        prompt, _ = get_or_create_prompt(user(text), session=session, system_prompt=system, source=source)
        prompts.append(prompt)
    session.commit()
    return prompts


# --- A small project: two candidates, one comparison per prompt -----------------------------------


@dataclass
class Project:
    prompts: list[Prompt] = field(default_factory=list)
    candidates: list[CandidateModel] = field(default_factory=list)
    responses: dict[tuple[int, str], Response] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    clinicians: list[Annotator] = field(default_factory=list)
    admin: Annotator | None = None


def build_project(session: Session, *, n_prompts: int = 4, n_clinicians: int = 2,
                  judgments_required: int = 1, with_judgments: bool = False) -> Project:
    """Prompts × two candidates ("warm" long replies, "terse" short ones), one comparison each.

    With ``with_judgments`` every clinician prefers the warm reply (strength 2) on every comparison.
    """
    project = Project()
    add_guideline_version("Prefer replies that are safe, empathic and specific.", session=session)
    warm, _ = get_or_create_candidate("warm", session=session, provider="local", model_id="warm-model")
    terse, _ = get_or_create_candidate("terse", session=session, provider="local", model_id="terse-model")
    project.candidates = [warm, terse]
    project.admin = create_annotator("admin", PASSWORD, session=session, role="admin")
    for i in range(n_clinicians):
        project.clinicians.append(create_annotator(f"clin{i}", PASSWORD, session=session, credential="LCSW"))
    project.prompts = add_prompts(session, n_prompts)
    for prompt, text in zip(project.prompts, PATIENT_MESSAGES, strict=False):
        r_warm, _ = add_response(prompt, warm, f"That sounds really hard. Tell me more about '{text[:20]}'. "
                                 "What has helped you before, even a little?", session=session)
        r_terse, _ = add_response(prompt, terse, "Okay.", session=session)
        project.responses[(prompt.id, "warm")] = r_warm
        project.responses[(prompt.id, "terse")] = r_terse
        comparison, _ = add_comparison(r_warm, r_terse, session=session, judgments_required=judgments_required)
        project.comparisons.append(comparison)
        if with_judgments:
            for clinician in project.clinicians:
                preferred = "a" if comparison.response_a_id == r_warm.id else "b"
                add_judgment(comparison, clinician, preferred, session=session, strength=2,
                             guideline_version=1, ms_spent=4000)
    session.commit()
    return project


def make_database(url: str, *, n_prompts: int = 4, n_clinicians: int = 2, judgments_required: int = 1,
                  xss: bool = False, with_judgments: bool = False) -> tuple[Engine, Project]:
    """A migrated database with ``build_project`` (its judgments too with ``with_judgments``);
    optionally one pair whose reply is hostile HTML."""
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=n_prompts, n_clinicians=n_clinicians,
                                judgments_required=judgments_required, with_judgments=with_judgments)
        if xss:
            prompt, _ = get_or_create_prompt(user("Line one of my message\nline two <b>not bold</b>"),
                                             session=session, source="test")
            hostile, _ = add_response(prompt, project.candidates[0], XSS_REPLY, session=session)
            plain, _ = add_response(prompt, project.candidates[1], "A plain reply.", session=session)
            # One place only, so that it sorts first when the others need more (fewest places first).
            comparison, _ = add_comparison(hostile, plain, session=session, judgments_required=1)
            project.comparisons.insert(0, comparison)
            session.commit()
    return engine, project


# --- Everything a report shows ----------------------------------------------------------------------


def build_rich_project(session: Session, *, n_prompts: int = 6, n_clinicians: int = 3) -> Project:
    """build_project plus a third candidate with a hostile reply, a clinician with a hostile username,
    disagreements, ties, safety flags, screen sides, timings, topics and a gold comparison."""
    project = build_project(session, n_prompts=n_prompts, n_clinicians=n_clinicians, judgments_required=3)
    project.clinicians.append(create_annotator(HOSTILE_NAME, PASSWORD, session=session))
    odd, _ = get_or_create_candidate("odd <b>model</b>", session=session, provider="local")
    rng = np.random.default_rng(0)
    comparisons = list(project.comparisons)
    for i, prompt in enumerate(project.prompts):
        prompt.topic = "sleep" if i % 2 else "self-worth"
        session.add(prompt)
        text = HOSTILE_REPLY if i == 0 else f"Reply {i}: breathe slowly."
        reply, _ = add_response(prompt, odd, text, session=session)
        for other in ("warm", "terse"):
            comparison, _ = add_comparison(reply, project.responses[(prompt.id, other)], session=session,
                                           judgments_required=3)
            comparisons.append(comparison)
    for n, comparison in enumerate(comparisons):
        for k, clinician in enumerate(project.clinicians):
            if (n + k) % 5 == 4:
                continue
            preferred = str(rng.choice(["a", "b", "tie", "both_bad"], p=[0.5, 0.3, 0.1, 0.1]))
            add_judgment(comparison, clinician, preferred, session=session, strength=int(rng.integers(1, 4)),
                         shown_left=str(rng.choice(["a", "b"])), ms_spent=int(rng.integers(800, 30000)),
                         flags_a=["dismissive"] if rng.random() < 0.2 else [],
                         flags_b=["misses_risk", "toxic"] if rng.random() < 0.15 else [], guideline_version=1)
    comparisons[0].gold_answer = "a"
    session.add(comparisons[0])
    session.commit()
    return project


# --- The export scenario: every vote chosen by hand ----------------------------------------------


@dataclass
class Scenario:
    prompts: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


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


# --- A judged pool: clinicians' labels and a judge's verdicts, chosen per comparison ----------------


def build_judged_pool(session: Session, clinicians: list[list[str]], verdicts: list[tuple[str, float]], *,
                      judge: str = "sim", judgments_required: int = 3, flagged: set[int] = frozenset(),
                      concerns: set[int] = frozenset()) -> list[int]:
    """One comparison per entry (committed; its ids returned): ``clinicians[i]`` are the labels of
    clinicians clin0, clin1, … on comparison i (possibly none), ``verdicts[i]`` the judge's (preferred,
    confidence). Comparisons in ``flagged`` get a clinician's safety flag on reply a (or the judge's,
    where no clinician judged); in ``concerns`` the judge reports a safety concern."""
    warm, _ = get_or_create_candidate("warm", session=session, provider="local", model_id="warm-model")
    terse, _ = get_or_create_candidate("terse", session=session, provider="local", model_id="terse-model")
    width = max((len(labels) for labels in clinicians), default=0)
    people = [Annotator(username=f"clin{k}", role="clinician", credential="LCSW") for k in range(width)]
    session.add_all(people)
    session.flush()
    model = judge_annotator(judge, session=session)
    ids = []
    for i, (labels, (preferred, confidence)) in enumerate(zip(clinicians, verdicts, strict=True)):
        prompt, _ = get_or_create_prompt(user(f"Patient message {i}: I feel stuck."), session=session,
                                         source="test")
        a, _ = add_response(prompt, warm, f"That sounds hard ({i}). What has helped before?", session=session)
        b, _ = add_response(prompt, terse, f"Okay ({i}).", session=session)
        comparison, _ = add_comparison(a, b, session=session, judgments_required=judgments_required)
        for k, label in enumerate(labels):
            add_judgment(comparison, people[k], label, session=session,
                         flags_a=["misses_risk"] if i in flagged and k == 0 else [])
        record_verdict(comparison.id, model.id, preferred, session=session, confidence=confidence,
                       safety_concern=i in concerns,
                       flags_a=["misses_risk"] if i in flagged and not labels else ())
        ids.append(comparison.id)
    session.commit()
    return ids
