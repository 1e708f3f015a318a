"""push state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 05:03:15.891841
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_push_at_ms", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("last_push_seq", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("push_jobs", schema=None) as batch_op:
        batch_op.drop_column("claim_id")

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("last_push_seq")
        batch_op.drop_column("last_push_at_ms")
