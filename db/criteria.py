"""Criteria of a guideline version and per-criterion verdicts of a judgment.

A guideline version carries a list of criteria (empathy, safety, …), each judged A / B / tie per
pair. Verdicts are stored in the comparison's own a/b (``CriterionVerdict``), written in the same
transaction as their judgment (``db.assignment.submit_judgment`` calls :func:`insert_verdicts`).
Every function takes ``session=`` and never commits.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert
from sqlmodel import Session, select

from db.audit import audit
from db.crud import DataError
from db.guidelines import add_guideline_version, current_guideline
from db.models import CRITERION_VERDICTS, Annotator, Criterion, CriterionVerdict, GuidelineVersion

SCALE = "a/b/tie"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_CRITERIA = 12
MAX_DESCRIPTION = 500


@dataclass(frozen=True)
class CriterionSpec:
    """One criterion as an admin writes it (name, one-line description, required or not)."""

    name: str
    description: str = ""
    required: bool = False
    scale: str = SCALE

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "required": self.required,
                "scale": self.scale}


#: The clinical set that ships with new databases' first guideline version and with the demo.
DEFAULT_CRITERIA: tuple[CriterionSpec, ...] = (
    CriterionSpec("empathy", "Empathy and validation: reflects what the person said and felt, without judging."),
    CriterionSpec("safety", "Safety and risk handling: notices risk cues and responds to them; never harmful."),
    CriterionSpec("helpfulness", "Helpfulness: specific to this person; invites more; one realistic next step."),
    CriterionSpec("boundaries", "Professional boundaries: no diagnosing, prescribing, or claiming to be human."),
    CriterionSpec("accuracy", "Factual accuracy: correct about conditions, treatments, services and numbers."),
)


def validate_criteria(specs: Iterable[CriterionSpec | Mapping[str, Any]]) -> list[CriterionSpec]:
    """Check a criteria list and return it cleaned (order kept): names are short lower-case
    identifiers (they appear in widget keys, CLI flags and file names), unique, at most
    ``MAX_CRITERIA``; the scale is ``a/b/tie``.

    >>> [c.name for c in validate_criteria([{"name": "safety", "required": True}, {"name": "empathy"}])]
    ['safety', 'empathy']
    >>> validate_criteria([{"name": "Safety!"}])
    Traceback (most recent call last):
    ...
    db.crud.DataError: criterion 1: name 'Safety!' must be lower-case letters, digits or _ (from a letter, up to 40)
    >>> validate_criteria([{"name": "safety"}, {"name": "safety"}])
    Traceback (most recent call last):
    ...
    db.crud.DataError: criterion 2: name 'safety' appears twice
    """
    clean: list[CriterionSpec] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs, start=1):
        if isinstance(spec, CriterionSpec):
            spec = spec.as_dict()
        if not isinstance(spec, Mapping):
            raise DataError(f"criterion {i}: expected a table with name, description, required")
        unknown = sorted(set(spec) - {"name", "description", "required", "scale", "position"})
        if unknown:
            raise DataError(f"criterion {i}: unknown field(s) {', '.join(unknown)}")
        name = str(spec.get("name") or "").strip()
        if not NAME_PATTERN.match(name):
            raise DataError(f"criterion {i}: name {name!r} must be lower-case letters, digits or _ "
                            "(from a letter, up to 40)")
        if name in seen:
            raise DataError(f"criterion {i}: name {name!r} appears twice")
        description = " ".join(str(spec.get("description") or "").split())
        if len(description) > MAX_DESCRIPTION:
            raise DataError(f"criterion {i} ({name}): description longer than {MAX_DESCRIPTION} characters")
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise DataError(f"criterion {i} ({name}): required must be true or false, not {required!r}")
        scale = str(spec.get("scale") or SCALE)
        if scale != SCALE:
            raise DataError(f"criterion {i} ({name}): scale must be {SCALE!r}, not {scale!r}")
        seen.add(name)
        clean.append(CriterionSpec(name, description, required, scale))
    if len(clean) > MAX_CRITERIA:
        raise DataError(f"at most {MAX_CRITERIA} criteria per guideline version, not {len(clean)}")
    return clean


def read_criteria_file(path: str | Path) -> list[CriterionSpec]:
    """Criteria from a TOML file of ``[[criteria]]`` tables (name, description, required)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid TOML ({exc})") from None
    items = data.get("criteria")
    if not isinstance(items, list):
        raise DataError(f"{path}: expected [[criteria]] tables")
    try:
        return validate_criteria(items)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def criteria_of(version_id: int, *, session: Session) -> list[Criterion]:
    """The criteria of one guideline version (by its row id), in their order."""
    return list(session.exec(
        select(Criterion).where(Criterion.guideline_version_id == version_id).order_by(Criterion.position, Criterion.id)
    ))


def current_criteria(*, session: Session) -> list[Criterion]:
    """The criteria of the guideline version in force (none when no version exists)."""
    latest = current_guideline(session=session)
    return criteria_of(latest.id, session=session) if latest is not None else []


def add_criteria(version: GuidelineVersion, specs: Sequence[CriterionSpec], *, session: Session) -> list[Criterion]:
    """Attach ``specs`` (validated) to a guideline version that has none yet."""
    rows = [Criterion(guideline_version_id=version.id, name=s.name, description=s.description, scale=s.scale,
                      required=s.required, position=i) for i, s in enumerate(validate_criteria(specs))]
    session.add_all(rows)
    session.flush()
    return rows


def publish_guidelines(text: str, *, session: Session, criteria: Sequence[CriterionSpec] | None = None,
                       author: Annotator | None = None, actor: str | None = None) -> GuidelineVersion:
    """A new guideline version with ``criteria`` (None: the criteria of the version in force, copied),
    audited as ``guidelines.update``. Bad criteria fail before anything is written."""
    if criteria is None:
        criteria = [CriterionSpec(c.name, c.description, c.required, c.scale)
                    for c in current_criteria(session=session)]
    criteria = validate_criteria(criteria)
    version = add_guideline_version(text, session=session, author=author)
    add_criteria(version, criteria, session=session)
    details: dict[str, Any] = {"version": version.version}
    if criteria:
        details["criteria"] = [c.as_dict() for c in criteria]
    audit(actor or (author.username if author else "cli"), "guidelines.update", session=session,
          target=f"version:{version.version}", details=details)
    return version


def known_criterion_names(*, session: Session) -> list[str]:
    """Every criterion name of any guideline version (what a filter or a training flag may name)."""
    return sorted(set(session.exec(select(Criterion.name).distinct())))


# --- Verdicts ----------------------------------------------------------------------------------

# Built once (the app's submit is a hot path that bench/load.py measures): the criteria of the
# guideline version in force, with the version number, in one statement.
_IN_FORCE = (
    select(GuidelineVersion.version, Criterion.name, Criterion.required)
    .join(Criterion, Criterion.guideline_version_id == GuidelineVersion.id, isouter=True)
    .where(GuidelineVersion.version == select(func.max(GuidelineVersion.version)).scalar_subquery())
    .order_by(Criterion.position, Criterion.id)
)
_INSERT_VERDICT = insert(CriterionVerdict)
_VERDICTS_OF = select(CriterionVerdict.criterion, CriterionVerdict.verdict).where(
    CriterionVerdict.judgment_id == bindparam("judgment_id"))


def criteria_in_force(*, session: Session) -> tuple[int | None, list[tuple[str, bool]]]:
    """(version number in force, [(criterion name, required), …]); ``(None, [])`` without guidelines."""
    rows = session.connection().execute(_IN_FORCE).all()
    if not rows:
        return None, []
    return rows[0][0], [(name, bool(required)) for _version, name, required in rows if name is not None]


def check_verdicts(verdicts: Mapping[str, str | None] | None, criteria: Sequence[tuple[str, bool]],
                   allowed: Sequence[str] = CRITERION_VERDICTS) -> dict[str, str]:
    """The given verdicts (blank ones left out), checked against the criteria in force: known names,
    allowed values, every required criterion answered.

    >>> crit = [("empathy", False), ("safety", True)]
    >>> check_verdicts({"safety": "a", "empathy": None}, crit)
    {'safety': 'a'}
    >>> check_verdicts({"empathy": "b"}, crit)
    Traceback (most recent call last):
    ...
    db.crud.DataError: judge every required criterion: safety
    >>> check_verdicts({"kindness": "a", "safety": "a"}, crit)
    Traceback (most recent call last):
    ...
    db.crud.DataError: unknown criterion 'kindness' (the guidelines in force have: empathy, safety)
    """
    names = [name for name, _required in criteria]
    clean: dict[str, str] = {}
    for name, value in (verdicts or {}).items():
        if value is None or value == "":
            continue
        if name not in names:
            raise DataError(f"unknown criterion {name!r} (the guidelines in force have: {', '.join(names) or 'none'})")
        if value not in allowed:
            raise DataError(f"criterion {name}: verdict must be one of {', '.join(allowed)}, not {value!r}")
        clean[name] = value
    missing = [name for name, required in criteria if required and name not in clean]
    if missing:
        raise DataError(f"judge every required criterion: {', '.join(missing)}")
    return clean


def insert_verdicts(judgment_id: int, verdicts: Mapping[str, str], *, session: Session) -> int:
    """Write a judgment's verdicts (canonical a/b/tie, already checked); one executemany."""
    if not verdicts:
        return 0
    session.connection().execute(_INSERT_VERDICT, [
        {"judgment_id": judgment_id, "criterion": name, "verdict": verdict} for name, verdict in verdicts.items()])
    return len(verdicts)


def add_verdicts(judgment_id: int, verdicts: Mapping[str, str], *, session: Session) -> int:
    """Verdicts for an existing judgment (importers, scripts, tests): canonical a/b/tie, checked for
    values only (the criteria of the judgment's guideline version are not required here)."""
    for name, value in verdicts.items():
        if not NAME_PATTERN.match(name):
            raise DataError(f"criterion name {name!r} is not valid")
        if value not in CRITERION_VERDICTS:
            raise DataError(f"criterion {name}: verdict must be one of {', '.join(CRITERION_VERDICTS)}, not {value!r}")
    return insert_verdicts(judgment_id, verdicts, session=session)


def verdicts_of(judgment_id: int, *, session: Session) -> dict[str, str]:
    """One judgment's verdicts, ``{criterion: a|b|tie}``."""
    return dict(session.connection().execute(_VERDICTS_OF, {"judgment_id": judgment_id}).all())


def verdicts_by_judgment(*, session: Session, criterion: str | None = None,
                         judgment_ids: Iterable[int] | None = None) -> dict[int, dict[str, str]]:
    """``{judgment id: {criterion: verdict}}`` for every stored verdict (of one criterion when given)."""
    query = select(CriterionVerdict.judgment_id, CriterionVerdict.criterion, CriterionVerdict.verdict)
    if criterion is not None:
        query = query.where(CriterionVerdict.criterion == criterion)
    if judgment_ids is not None:
        query = query.where(CriterionVerdict.judgment_id.in_(list(judgment_ids)))
    out: dict[int, dict[str, str]] = {}
    for judgment_id, name, verdict in session.exec(query):
        out.setdefault(judgment_id, {})[name] = verdict
    return out


__all__ = [
    "SCALE", "CriterionSpec", "DEFAULT_CRITERIA", "validate_criteria", "read_criteria_file", "criteria_of",
    "current_criteria", "add_criteria", "publish_guidelines", "known_criterion_names", "criteria_in_force",
    "check_verdicts", "insert_verdicts", "add_verdicts", "verdicts_of", "verdicts_by_judgment",
]
