"""The demo project: patient messages written for TheraPref, two embedded candidates, their
replies, comparisons (some judged by two clinicians, for agreement) and two accounts."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from candidates.demo_prompts import DEMO_PROMPTS
from db.assignment import ensure_guidelines
from db.audit import audit
from db.auth import create_annotator, get_annotator, set_password
from db.crud import get_or_create_prompt
from db.engine import session_scope
from db.migrate import upgrade

DEMO_SOURCE = "demo"
DEMO_ACCOUNTS = (("demo-admin", "admin", "Demo Admin"), ("demo-clinician", "clinician", "Demo Clinician"))


@dataclass
class DemoResult:
    prompts_added: int = 0
    prompts_total: int = 0
    credentials: dict[str, str] = field(default_factory=dict)
    generation: object | None = None
    pairing: object | None = None

    def lines(self) -> list[str]:
        out = [f"Prompts: {self.prompts_added} added, {self.prompts_total} in the demo set."]
        if self.generation is not None:
            out.append(f"Generation: {self.generation}")
        if self.pairing is not None:
            out.append(f"Pairs: {self.pairing}")
        return out


def _password() -> str:
    return secrets.token_urlsafe(12)


def seed_demo_prompts(*, session) -> tuple[int, list[int]]:  # noqa: ANN001
    """Add the demo messages; return how many were new and the ids of all of them."""
    added, ids = 0, []
    for index, (topic, text) in enumerate(DEMO_PROMPTS):
        prompt, created = get_or_create_prompt([{"role": "user", "content": text}], session=session,
                                               source=DEMO_SOURCE, external_id=f"demo-{index:02d}", topic=topic)
        added += created
        ids.append(prompt.id)
    return added, ids


def reset_demo_accounts(*, session) -> dict[str, str]:  # noqa: ANN001
    """Create the demo accounts, or give them fresh random passwords; return the credentials."""
    credentials = {}
    for username, role, display in DEMO_ACCOUNTS:
        password = _password()
        if get_annotator(username, session=session) is None:
            create_annotator(username, password, session=session, role=role, display_name=display,
                             credential="demo")
        else:
            set_password(username, password, session=session)
        credentials[username] = password
    audit("demo", "demo.accounts_reset", session=session, target=",".join(credentials))
    return credentials


def build_demo(engine: Engine, *, generate: bool = True, progress: bool = True, max_tokens: int = 96,
               overlap: int = 2, overlap_fraction: float = 0.25) -> DemoResult:
    """Build (or top up) the demo project in ``engine``'s database. Idempotent."""
    from candidates.pairing import make_pairs
    from candidates.registry import demo_candidates, sync_registry

    upgrade(engine)
    result = DemoResult(prompts_total=len(DEMO_PROMPTS))
    with session_scope(engine) as session:
        result.prompts_added, prompt_ids = seed_demo_prompts(session=session)
        ensure_guidelines(session=session)
        result.credentials = reset_demo_accounts(session=session)
        specs = demo_candidates(max_tokens=max_tokens)
        sync_registry(specs, session=session)
    if generate:
        from candidates.generate import run_generation

        # Only the demo prompts: a demo built into a working database must not generate for all of it.
        result.generation = run_generation(engine, specs, prompt_ids=prompt_ids, progress=progress)
    with session_scope(engine) as session:
        result.pairing = make_pairs(session=session, overlap=overlap, overlap_fraction=overlap_fraction, seed=0)
    return result
