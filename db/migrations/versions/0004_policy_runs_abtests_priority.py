"""Policy runs, A/B tests, and a priority per comparison (queue order).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("comparison", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Float(), nullable=False, server_default="0"))
    # The queue is served highest priority first, then fewest judgments, then lowest id: the index
    # spells out that mixed order so that it stays one index scan. Plain (non-batch) statements: a
    # batch rebuild on SQLite recreates indexes from reflection, which drops the DESC (a later
    # migration that rebuilds this table must recreate the index as here).
    op.drop_index("ix_comparison_queue", table_name="comparison")
    op.create_index("ix_comparison_queue", "comparison",
                    [sa.text("priority DESC"), "judgments_count", "judgments_required", "id"], unique=False)
    op.create_table(
        "policyrun",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("base_model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("provenance", sa.JSON(), nullable=True),
        sa.Column("data_fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("n_train", sa.Integer(), nullable=False),
        sa.Column("candidate_model_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.CheckConstraint("method IN ('sft', 'dpo', 'kto')", name="ck_policyrun_method"),
        sa.ForeignKeyConstraint(["candidate_model_id"], ["candidatemodel.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "abtest",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("new_candidate_id", sa.Integer(), nullable=False),
        sa.Column("base_candidate_id", sa.Integer(), nullable=False),
        sa.Column("policy_run_id", sa.Integer(), nullable=True),
        sa.Column("prompt_ids", sa.JSON(), nullable=True),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.CheckConstraint("new_candidate_id <> base_candidate_id", name="ck_abtest_distinct"),
        sa.ForeignKeyConstraint(["new_candidate_id"], ["candidatemodel.id"]),
        sa.ForeignKeyConstraint(["base_candidate_id"], ["candidatemodel.id"]),
        sa.ForeignKeyConstraint(["policy_run_id"], ["policyrun.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("abtest", schema=None) as batch_op:
        batch_op.create_index("ix_abtest_new_candidate_id", ["new_candidate_id"], unique=False)
        batch_op.create_index("ix_abtest_base_candidate_id", ["base_candidate_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("abtest", schema=None) as batch_op:
        batch_op.drop_index("ix_abtest_base_candidate_id")
        batch_op.drop_index("ix_abtest_new_candidate_id")
    op.drop_table("abtest")
    op.drop_table("policyrun")
    op.drop_index("ix_comparison_queue", table_name="comparison")
    with op.batch_alter_table("comparison", schema=None) as batch_op:
        batch_op.drop_column("priority")
    op.create_index("ix_comparison_queue", "comparison", ["judgments_count", "judgments_required", "id"],
                    unique=False)
