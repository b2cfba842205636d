"""Comparison scores from reward models (active selection, issue 17): P(A better) and uncertainty per
open comparison and reward-model run, which ``therapref prioritize --strategy uncertainty`` reads.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comparisonscore",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("reward_model_run_id", sa.Integer(), nullable=False),
        sa.Column("p_a", sa.Float(), nullable=False),
        sa.Column("uncertainty", sa.Float(), nullable=False),
        sa.Column("n_members", sa.Integer(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["comparison_id"], ["comparison.id"]),
        sa.ForeignKeyConstraint(["reward_model_run_id"], ["rewardmodelrun.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("comparison_id", "reward_model_run_id", name="uq_comparison_score"),
    )
    with op.batch_alter_table("comparisonscore", schema=None) as batch_op:
        batch_op.create_index("ix_comparisonscore_comparison_id", ["comparison_id"], unique=False)
        batch_op.create_index("ix_comparisonscore_reward_model_run_id", ["reward_model_run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("comparisonscore", schema=None) as batch_op:
        batch_op.drop_index("ix_comparisonscore_reward_model_run_id")
        batch_op.drop_index("ix_comparisonscore_comparison_id")
    op.drop_table("comparisonscore")
