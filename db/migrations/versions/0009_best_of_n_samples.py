"""Best-of-n samples: every sample behind a best-of-n reply, with its reward (and safety) score.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

Existing databases have no best-of-n candidates: nothing to move.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bestofnsample",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("response_id", sa.Integer(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("text", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.Column("safety", sa.Float(), nullable=True),
        sa.Column("unsafe", sa.Boolean(), nullable=False),
        sa.Column("picked", sa.Boolean(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["response_id"], ["response.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("response_id", "sample_index", name="uq_bestofn_sample"),
    )
    with op.batch_alter_table("bestofnsample", schema=None) as batch_op:
        batch_op.create_index("ix_bestofnsample_response_id", ["response_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("bestofnsample", schema=None) as batch_op:
        batch_op.drop_index("ix_bestofnsample_response_id")
    op.drop_table("bestofnsample")
