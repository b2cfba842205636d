"""``register_policy``: a fine-tuned policy folder becomes a candidate that ``therapref generate`` runs.

1. The folder must be a Hugging Face causal LM (``config.json`` with a ``…ForCausalLM`` and weights);
   anything else is one clear :class:`~policy.gguf.ConversionError` and no row.
2. A Llama with the base's vocabulary is converted once into ``DIR/model.gguf`` (``policy.gguf``;
   reused while the folder is unchanged) and registered with the ``llamacpp`` provider, the fast CPU
   path. Any other causal LM is registered with the ``transformers`` provider, and a note says why.
3. The CandidateModel row is created, or updated when the same folder is registered again under its
   name; its ``params`` carry ``{"policy": {...}}`` (the folder, the GGUF, the training method and base
   when ``therapref_policy.json`` names them), the mark by which ``therapref generate`` includes it
   (``candidates.registry.registered_policy_specs``). Generation parameters are the registry's
   defaults (temperature 0.7, 256 tokens, seed 0); a ``[[candidate]]`` of the same name in the
   registry file overrides them.
4. The system prompt is ``system_prompt`` when given (``""`` = none), else the base's default: the
   prompt's own system message where it has one, else the TheraPref persona.
5. A PolicyRun recorded for the same folder is linked to the candidate (A/B tests read it).

Writes through ``db`` functions on the caller's session and never commits.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from db.audit import audit
from db.crud import get_or_create_candidate
from db.errors import TheraPrefError
from db.models import CandidateModel, PolicyRun, Response
from policy.gguf import ConversionError, NotConvertible, check_causal_lm, convert_to_gguf

# Same literal as candidates.registry.POLICY_PARAM (tests/test_policy_register.py checks they agree).
POLICY_PARAM = "policy"
POLICY_CARD = "therapref_policy.json"
MAX_NAME = 200


class RegistrationError(TheraPrefError, ValueError):
    """A policy that cannot be registered under this name."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_name(name: str) -> str:
    """A candidate name: stripped, non-empty, at most 200 characters, one line.

    >>> check_name("  policy-v2 ")
    'policy-v2'
    >>> check_name(" ")
    Traceback (most recent call last):
    ...
    policy.register.RegistrationError: candidate name is empty
    """
    name = (name or "").strip()
    if not name:
        raise RegistrationError("candidate name is empty")
    if len(name) > MAX_NAME or any(c in name for c in "\r\n\t"):
        raise RegistrationError(f"candidate name must be one line of at most {MAX_NAME} characters")
    return name


def training_facts(model_dir: Path) -> dict[str, Any]:
    """Method and base model from the folder's ``therapref_policy.json`` (empty when absent or unreadable:
    the card is provenance, not a requirement)."""
    path = model_dir / POLICY_CARD
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(card, dict):
        return {}
    config = card.get("config") if isinstance(card.get("config"), dict) else {}
    facts = {key: card.get(key, config.get(key)) for key in ("method", "base_model")}
    return {key: value for key, value in facts.items() if isinstance(value, str) and value}


def register_policy(model_dir: Path, name: str, *, session: Session, system_prompt: str | None = None,
                    outtype: str = "f16", actor: str = "cli",
                    note: Callable[[str], None] | None = _stderr) -> CandidateModel:
    """Add (or refresh) the candidate ``name`` that generates with the policy in ``model_dir``.

    ``note`` receives human-readable lines (the GGUF written or reused, a fallback to transformers);
    by default they go to stderr. Raises :class:`ConversionError` / :class:`RegistrationError`
    (one line each) before anything is written to the database.
    """
    say = note or (lambda _message: None)
    name = check_name(name)
    model_dir = Path(model_dir).expanduser().resolve()
    check_causal_lm(model_dir)
    existing = session.exec(select(CandidateModel).where(CandidateModel.name == name)).first()
    if existing is not None:
        _check_replaceable(existing, model_dir)
    policy: dict[str, Any] = {"model_dir": str(model_dir), **training_facts(model_dir)}
    try:
        result = convert_to_gguf(model_dir, outtype=outtype)
    except NotConvertible as exc:
        provider, model_id = "transformers", str(model_dir)
        policy["format"] = "hf"
        say(f"{model_dir}: no GGUF ({exc}); registered with the transformers provider, "
            "which runs it several times slower on CPU")
    else:
        provider, model_id = "llamacpp", str(result.path)
        policy.update(format=f"gguf-{result.outtype}", gguf=str(result.path))
        size = f"{result.size_bytes / 2**20:.0f} MiB"
        say(f"{result.path}: up to date ({size})" if result.reused
            else f"Wrote {result.path} ({result.outtype.upper()}, {size}) in {result.seconds:.1f} s")
    # Re-registration keeps parameters tuned since (a registry-file entry of the same name), unless the
    # provider changed and they belong to the other one.
    params = dict(existing.params) if existing is not None and existing.provider == provider else {}
    params[POLICY_PARAM] = policy
    row, created = get_or_create_candidate(
        name, session=session, provider=provider, model_id=model_id, endpoint=None, api_key_env=None,
        params=params, system_prompt=system_prompt,
    )
    _link_policy_run(row, model_dir, session=session)
    audit(actor, "policy.registered" if created else "policy.reregistered", session=session, target=name,
          details={"candidate_id": row.id, "provider": provider, **policy})
    return row


def _check_replaceable(row: CandidateModel, model_dir: Path) -> None:
    """Re-registering the same folder refreshes its row; anything else would mix two models' replies
    under one name."""
    policy = row.params.get(POLICY_PARAM) if isinstance(row.params, dict) else None
    if not isinstance(policy, dict):
        raise RegistrationError(f"candidate {row.name!r} already exists (provider {row.provider}) and is not a "
                                "registered policy; choose another name")
    if policy.get("model_dir") != str(model_dir):
        raise RegistrationError(f"candidate {row.name!r} is already registered for {policy.get('model_dir')}; "
                                "choose another name")


def _link_policy_run(row: CandidateModel, model_dir: Path, *, session: Session) -> None:
    for run in session.exec(select(PolicyRun).where(PolicyRun.candidate_model_id.is_(None))).all():  # type: ignore[union-attr]
        try:
            same = Path(run.path).expanduser().resolve() == model_dir
        except (OSError, RuntimeError):
            same = False
        if same:
            run.candidate_model_id = row.id
            session.add(run)
    session.flush()


def list_candidates(*, session: Session) -> list[dict[str, Any]]:
    """Every candidate (registry file, registered policies, imported sources) with its reply count.

    Keys: name, provider, model_id, replies, policy (True for registered policies), model_dir.
    """
    counts = dict(session.exec(select(Response.candidate_model_id, func.count(Response.id))
                               .group_by(Response.candidate_model_id)).all())
    rows = []
    for row in session.exec(select(CandidateModel).order_by(CandidateModel.name)).all():
        policy = row.params.get(POLICY_PARAM) if isinstance(row.params, dict) else None
        rows.append({"name": row.name, "provider": row.provider, "model_id": row.model_id,
                     "replies": int(counts.get(row.id, 0)), "policy": isinstance(policy, dict),
                     "model_dir": policy.get("model_dir") if isinstance(policy, dict) else None})
    return rows


__all__ = ["ConversionError", "NotConvertible", "RegistrationError", "list_candidates", "register_policy"]
