"""Single sign-on: an account's identity at an OpenID Connect provider (issuer + subject).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

A new table only; existing accounts keep their passwords. A downgrade refuses to run while
identities exist: their accounts have no password, and without the table they could never sign in
again (deactivate and delete them first, or keep this revision).
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "annotatoridentity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("issuer", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_login_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotator.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("issuer", "subject", name="uq_annotator_identity"),
    )
    with op.batch_alter_table("annotatoridentity", schema=None) as batch_op:
        batch_op.create_index("ix_annotatoridentity_annotator_id", ["annotator_id"], unique=False)


def downgrade() -> None:
    if op.get_bind().execute(sa.text("SELECT count(*) FROM annotatoridentity")).scalar():
        raise RuntimeError("single sign-on accounts exist (annotatoridentity rows); they have no password and "
                           "could not sign in below 0011: delete them before downgrading")
    with op.batch_alter_table("annotatoridentity", schema=None) as batch_op:
        batch_op.drop_index("ix_annotatoridentity_annotator_id")
    op.drop_table("annotatoridentity")
