"""Criteria per guideline version and per-criterion verdicts per judgment.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

Existing guideline versions get no criteria and existing judgments no verdicts: they stay valid as
they are. New databases get the default clinical criteria with their first guideline version
(``db.assignment.ensure_guidelines``); admins add or edit criteria by publishing a new version.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "criterion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guideline_version_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("scale", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("required", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["guideline_version_id"], ["guidelineversion.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("guideline_version_id", "name", name="uq_criterion_name"),
    )
    with op.batch_alter_table("criterion", schema=None) as batch_op:
        batch_op.create_index("ix_criterion_guideline_version_id", ["guideline_version_id"], unique=False)
    op.create_table(
        "criterionverdict",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("judgment_id", sa.Integer(), nullable=False),
        sa.Column("criterion", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("verdict", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.CheckConstraint("verdict IN ('a', 'b', 'tie')", name="ck_verdict_value"),
        sa.ForeignKeyConstraint(["judgment_id"], ["judgment.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("judgment_id", "criterion", name="uq_verdict_once"),
    )


def downgrade() -> None:
    op.drop_table("criterionverdict")
    with op.batch_alter_table("criterion", schema=None) as batch_op:
        batch_op.drop_index("ix_criterion_guideline_version_id")
    op.drop_table("criterion")
