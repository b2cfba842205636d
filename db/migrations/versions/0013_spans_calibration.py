"""Unsafe spans (characters of a reply a clinician marked unsafe, with the flag kind), the calibration
set (gold comparisons a lead chose, with a note) and admin settings (the calibration threshold).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

New tables only: existing judgments, rankings and gold answers are untouched either way. A downgrade
drops the spans, the calibration set and the settings (the gold answers themselves stay on
``comparison.gold_answer``).
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unsafespan",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("judgment_id", sa.Integer(), nullable=True),
        sa.Column("ranking_id", sa.Integer(), nullable=True),
        sa.Column("response_id", sa.Integer(), nullable=False),
        sa.Column("start_char", sa.Integer(), nullable=False),
        sa.Column("end_char", sa.Integer(), nullable=False),
        sa.Column("flag", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.CheckConstraint("(judgment_id IS NULL) <> (ranking_id IS NULL)", name="ck_unsafespan_owner"),
        sa.CheckConstraint("start_char >= 0 AND end_char > start_char", name="ck_unsafespan_range"),
        sa.ForeignKeyConstraint(["judgment_id"], ["judgment.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["ranking_id"], ["ranking.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["response_id"], ["response.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("unsafespan", schema=None) as batch_op:
        batch_op.create_index("ix_unsafespan_judgment_id", ["judgment_id"], unique=False)
        batch_op.create_index("ix_unsafespan_ranking_id", ["ranking_id"], unique=False)
        batch_op.create_index("ix_unsafespan_response_id", ["response_id"], unique=False)
    op.create_table(
        "calibrationitem",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("added_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["added_by"], ["annotator.id"]),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparison.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("comparison_id"),
    )
    op.create_table(
        "appsetting",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("appsetting")
    op.drop_table("calibrationitem")
    with op.batch_alter_table("unsafespan", schema=None) as batch_op:
        batch_op.drop_index("ix_unsafespan_response_id")
        batch_op.drop_index("ix_unsafespan_ranking_id")
        batch_op.drop_index("ix_unsafespan_judgment_id")
    op.drop_table("unsafespan")
