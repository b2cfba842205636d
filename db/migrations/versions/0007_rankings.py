"""Ranking tasks of K replies and clinicians' rankings.

New tables ``rankingtask`` (K replies of one prompt, overlap and queue counters), ``ranking`` (one
clinician's tiers, best first), ``rankingreservation`` and ``rankingskip`` (the ranking queue), and a
nullable ``judgment.ranking_id``: the pairwise judgments a ranking expands into point at it.

The downgrade drops the ranking tables and the column; the judgments a ranking expanded into stay
(as ordinary judgments of that clinician; their rationale still reads ``ranking #<id>``), so that
nothing the reward trainer and exports read changes when going down.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _task_and_annotator() -> list[sa.Column]:
    return [sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("task_id", sa.Integer(), nullable=False),
            sa.Column("annotator_id", sa.Integer(), nullable=False)]


def _task_and_annotator_keys() -> list[sa.ForeignKeyConstraint]:
    return [sa.ForeignKeyConstraint(["task_id"], ["rankingtask.id"]),
            sa.ForeignKeyConstraint(["annotator_id"], ["annotator.id"])]


def upgrade() -> None:
    op.create_table(
        "rankingtask",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("response_ids", sa.JSON(), nullable=True),
        sa.Column("response_key", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("judgments_required", sa.Integer(), nullable=False),
        sa.Column("judgments_count", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False, server_default="0"),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.CheckConstraint("judgments_required >= 1", name="ck_rankingtask_required"),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompt.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prompt_id", "response_key", name="uq_rankingtask_responses"),
    )
    with op.batch_alter_table("rankingtask", schema=None) as batch_op:
        batch_op.create_index("ix_rankingtask_prompt_id", ["prompt_id"], unique=False)
        batch_op.create_index("ix_rankingtask_queue", ["judgments_count", "judgments_required", "id"], unique=False)

    op.create_table(
        "ranking",
        *_task_and_annotator(),
        sa.Column("order", sa.JSON(), nullable=True),
        sa.Column("shown_order", sa.JSON(), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=True),
        sa.Column("rationale", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("ms_spent", sa.Integer(), nullable=True),
        sa.Column("guideline_version", sa.Integer(), nullable=True),
        sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        *_task_and_annotator_keys(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_ranking_once"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("ranking", schema=None) as batch_op:
        batch_op.create_index("ix_ranking_task_id", ["task_id"], unique=False)
        batch_op.create_index("ix_ranking_annotator_id", ["annotator_id"], unique=False)
        batch_op.create_index("ix_ranking_created_at", ["created_at"], unique=False)

    op.create_table(
        "rankingreservation",
        *_task_and_annotator(),
        sa.Column("token", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        *_task_and_annotator_keys(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_rankingreservation"),
        sa.UniqueConstraint("token"),
    )
    with op.batch_alter_table("rankingreservation", schema=None) as batch_op:
        batch_op.create_index("ix_rankingreservation_task_id", ["task_id"], unique=False)
        batch_op.create_index("ix_rankingreservation_annotator_id", ["annotator_id"], unique=False)
        batch_op.create_index("ix_rankingreservation_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "rankingskip",
        *_task_and_annotator(),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        *_task_and_annotator_keys(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_rankingskip_once"),
    )
    with op.batch_alter_table("rankingskip", schema=None) as batch_op:
        batch_op.create_index("ix_rankingskip_task_id", ["task_id"], unique=False)
        batch_op.create_index("ix_rankingskip_annotator_id", ["annotator_id"], unique=False)

    with op.batch_alter_table("judgment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ranking_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_judgment_ranking_id", ["ranking_id"], unique=False)
        batch_op.create_foreign_key("fk_judgment_ranking_id", "ranking", ["ranking_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("judgment", schema=None) as batch_op:
        batch_op.drop_constraint("fk_judgment_ranking_id", type_="foreignkey")
        batch_op.drop_index("ix_judgment_ranking_id")
        batch_op.drop_column("ranking_id")
    for table, indexes in (
        ("rankingskip", ["ix_rankingskip_annotator_id", "ix_rankingskip_task_id"]),
        ("rankingreservation", ["ix_rankingreservation_expires_at", "ix_rankingreservation_annotator_id",
                                "ix_rankingreservation_task_id"]),
        ("ranking", ["ix_ranking_created_at", "ix_ranking_annotator_id",
                     "ix_ranking_task_id"]),
        ("rankingtask", ["ix_rankingtask_queue", "ix_rankingtask_prompt_id"]),
    ):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for index in indexes:
                batch_op.drop_index(index)
        op.drop_table(table)
