"""Model judges: their verdicts' confidence, safety concern and stand-in marker, and failed attempts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

A judge's verdict is an ordinary judgment by a ``judge:<name>`` source annotator; ``judgeverdict``
holds what a judgment has no column for. Existing databases have no judges: nothing to move.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "judgeverdict",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("judgment_id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("safety_concern", sa.Boolean(), nullable=True),
        sa.Column("stands_in", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("gated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.CheckConstraint("confidence >= 0 AND confidence <= 1", name="ck_judgeverdict_confidence"),
        sa.ForeignKeyConstraint(["judgment_id"], ["judgment.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparison.id"]),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotator.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("judgment_id", name="uq_judge_verdict"),
    )
    with op.batch_alter_table("judgeverdict", schema=None) as batch_op:
        batch_op.create_index("ix_judgeverdict_comparison_id", ["comparison_id"], unique=False)
        batch_op.create_index("ix_judgeverdict_annotator_id", ["annotator_id"], unique=False)
    op.create_table(
        "judgefailure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("answer", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparison.id"]),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotator.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("comparison_id", "annotator_id", name="uq_judge_failure"),
    )
    with op.batch_alter_table("judgefailure", schema=None) as batch_op:
        batch_op.create_index("ix_judgefailure_comparison_id", ["comparison_id"], unique=False)
        batch_op.create_index("ix_judgefailure_annotator_id", ["annotator_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("judgefailure", schema=None) as batch_op:
        batch_op.drop_index("ix_judgefailure_annotator_id")
        batch_op.drop_index("ix_judgefailure_comparison_id")
    op.drop_table("judgefailure")
    with op.batch_alter_table("judgeverdict", schema=None) as batch_op:
        batch_op.drop_index("ix_judgeverdict_annotator_id")
        batch_op.drop_index("ix_judgeverdict_comparison_id")
    op.drop_table("judgeverdict")
