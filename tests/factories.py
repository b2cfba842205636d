"""Small real databases for tests: a few prompts, candidates, comparisons and judgments."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from db.auth import create_annotator
from db.crud import (
    add_comparison,
    add_guideline_version,
    add_judgment,
    add_response,
    get_or_create_candidate,
    get_or_create_prompt,
)
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
    for text in PATIENT_MESSAGES[:n_prompts]:
        prompt, _ = get_or_create_prompt([{"role": "user", "content": text}], session=session,
                                         system_prompt=SYSTEM, source="test")
        project.prompts.append(prompt)
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
