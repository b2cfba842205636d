"""Guideline versions: the annotation guidelines in force and a new version of them. Functions take
``session=`` and never commit (criteria per version: ``db.criteria``)."""

from __future__ import annotations

from sqlmodel import Session, select

from db.crud import DataError
from db.models import Annotator, GuidelineVersion


def current_guideline(*, session: Session) -> GuidelineVersion | None:
    """The newest guideline version, or ``None`` before any was written."""
    return session.exec(select(GuidelineVersion).order_by(GuidelineVersion.version.desc())).first()


def add_guideline_version(text: str, *, session: Session, author: Annotator | None = None) -> GuidelineVersion:
    """Store ``text`` as the next guideline version (1 for the first)."""
    if not text.strip():
        raise DataError("guidelines text is empty")
    latest = current_guideline(session=session)
    version = GuidelineVersion(version=(latest.version + 1) if latest else 1, text=text,
                               author_id=author.id if author else None)
    session.add(version)
    session.flush()
    return version
