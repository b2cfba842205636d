"""Adjudication: role ``lead`` and a lead's final label for a comparison clinicians disagreed on.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03

The role check on ``annotator`` gains ``lead`` (SQLite rebuilds the table, keeping its rows) and the
``adjudication`` table is added. A downgrade refuses to run while leads or adjudications exist:
dropping a lead's final labels, or demoting leads, silently would change what trains and exports.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

NAME = "ck_annotator_role"
OLD = "role IN ('clinician', 'admin', 'source')"
NEW = "role IN ('clinician', 'lead', 'admin', 'source')"


def _replace(condition: str) -> None:
    with op.batch_alter_table("annotator", schema=None) as batch_op:  # SQLite rebuilds, PostgreSQL alters
        batch_op.drop_constraint(NAME, type_="check")
        batch_op.create_check_constraint(NAME, condition)


def upgrade() -> None:
    _replace(NEW)
    op.create_table(
        "adjudication",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("preferred", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("strength", sa.Integer(), nullable=True),
        sa.Column("flags_a", sa.JSON(), nullable=True),
        sa.Column("flags_b", sa.JSON(), nullable=True),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.CheckConstraint("preferred IN ('a', 'b', 'tie', 'both_bad')", name="ck_adjudication_preferred"),
        sa.CheckConstraint("strength IS NULL OR (strength BETWEEN 1 AND 3)", name="ck_adjudication_strength"),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotator.id"]),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparison.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("comparison_id"),
    )
    with op.batch_alter_table("adjudication", schema=None) as batch_op:
        batch_op.create_index("ix_adjudication_annotator_id", ["annotator_id"], unique=False)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM adjudication")).scalar():
        raise RuntimeError("adjudications exist; delete them before downgrading below 0012")
    if bind.execute(sa.text("SELECT count(*) FROM annotator WHERE role = 'lead'")).scalar():
        raise RuntimeError("lead accounts exist; change their role before downgrading below 0012")
    with op.batch_alter_table("adjudication", schema=None) as batch_op:
        batch_op.drop_index("ix_adjudication_annotator_id")
    op.drop_table("adjudication")
    _replace(OLD)
