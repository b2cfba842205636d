"""Judgment.margin: an imported dataset's margin gets its own column (it was text in the rationale).

Up to 0002 the importers wrote an imported judgment's rationale as
``imported from <dataset> (<where>); margin=<repr(float)>`` (``; margin=…`` only when the dataset
gave one). The upgrade moves that number into ``judgment.margin`` and strips ``; margin=…`` from the
rationale, leaving ``imported from <dataset> (<where>)``; the downgrade writes it back the same way.
Only judgments of imported sources (``annotator.role = 'source'``) are read: a clinician's own
rationale that happens to end in ``margin=`` is their text, not a margin.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""
from __future__ import annotations

import math
import re

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The exact text of db/importers/base.py before this revision (frozen here: the importers no longer
# write it). The margin is the last "; margin=" of the rationale; a file name may contain anything.
_IMPORTED_MARGIN = re.compile(r"\A(?P<head>imported from .+\)); margin=(?P<margin>[-+0-9.eE]+)\Z", re.DOTALL)
_BATCH = 5000

# Lightweight tables: a migration must not depend on the models as they are today.
_judgment = sa.table("judgment", sa.column("id", sa.Integer), sa.column("annotator_id", sa.Integer),
                     sa.column("rationale", sa.String), sa.column("margin", sa.Float))
_annotator = sa.table("annotator", sa.column("id", sa.Integer), sa.column("role", sa.String))


def _split(rationale: str) -> tuple[str, float] | None:
    """``(rationale without the margin, margin)`` for the importers' text, else ``None``."""
    match = _IMPORTED_MARGIN.match(rationale or "")
    if match is None:
        return None
    try:
        margin = float(match.group("margin"))
    except ValueError:
        return None
    return (match.group("head"), margin) if math.isfinite(margin) else None


def _update(connection: sa.Connection, rows: list[dict]) -> None:
    statement = (sa.update(_judgment).where(_judgment.c.id == sa.bindparam("judgment_id"))
                 .values(rationale=sa.bindparam("new_rationale"), margin=sa.bindparam("new_margin")))
    for start in range(0, len(rows), _BATCH):
        connection.execute(statement, rows[start:start + _BATCH])


def upgrade() -> None:
    with op.batch_alter_table("judgment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("margin", sa.Float(), nullable=True))
    connection = op.get_bind()
    imported = connection.execute(
        sa.select(_judgment.c.id, _judgment.c.rationale)
        .join(_annotator, _annotator.c.id == _judgment.c.annotator_id)
        .where(_annotator.c.role == "source", _judgment.c.rationale.like("%; margin=%"))
    ).all()
    rows = []
    for judgment_id, rationale in imported:
        split = _split(rationale)
        if split is not None:
            rows.append({"judgment_id": judgment_id, "new_rationale": split[0], "new_margin": split[1]})
    _update(connection, rows)


def downgrade() -> None:
    connection = op.get_bind()
    with_margin = connection.execute(
        sa.select(_judgment.c.id, _judgment.c.rationale, _judgment.c.margin).where(_judgment.c.margin.is_not(None))
    ).all()
    rows = [
        {"judgment_id": judgment_id, "new_margin": None,
         "new_rationale": (f"{rationale}; " if rationale else "") + f"margin={float(margin)!r}"}
        for judgment_id, rationale, margin in with_margin
    ]
    _update(connection, rows)
    with op.batch_alter_table("judgment", schema=None) as batch_op:
        batch_op.drop_column("margin")
