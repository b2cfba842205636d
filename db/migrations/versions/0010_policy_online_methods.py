"""Policy runs of the methods that sample their own replies against a reward model: rs, grpo, rloo.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Only the check constraint on ``policyrun.method`` changes (SQLite rebuilds the table, keeping its rows).
A downgrade refuses to run while rows of the new methods exist: dropping them silently would lose the
provenance of trained models.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

NAME = "ck_policyrun_method"
OLD = "method IN ('sft', 'dpo', 'kto')"
NEW = "method IN ('sft', 'dpo', 'kto', 'rs', 'grpo', 'rloo')"


def _replace(condition: str) -> None:
    with op.batch_alter_table("policyrun", schema=None) as batch_op:  # SQLite rebuilds, PostgreSQL alters
        batch_op.drop_constraint(NAME, type_="check")
        batch_op.create_check_constraint(NAME, condition)


def upgrade() -> None:
    _replace(NEW)


def downgrade() -> None:
    newer = op.get_bind().execute(sa.text("SELECT count(*) FROM policyrun WHERE method IN ('rs', 'grpo', 'rloo')"))
    if newer.scalar():
        raise RuntimeError("policy runs of rs/grpo/rloo exist; delete them before downgrading below 0010")
    _replace(OLD)
