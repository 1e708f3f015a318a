"""media, message_media, uploads

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "media",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", _ID, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("size >= 0", name=op.f("ck_media_size_non_negative")),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_media_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_media")),
    )
    op.create_index(op.f("ix_media_owner_id"), "media", ["owner_id"], unique=False)
    op.create_table(
        "message_media",
        sa.Column("media_id", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_message_media_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["media_id"], ["media.id"], name=op.f("fk_message_media_media_id_media"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("media_id", "conversation_id", name=op.f("pk_message_media")),
    )
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", _ID, nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("received_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("metadata", sa.Text(), server_default="", nullable=False),
        sa.Column("s3_upload_id", sa.String(length=1024), nullable=True),
        sa.Column("s3_parts", sa.Text(), server_default="[]", nullable=False),
        sa.Column("tail_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lock_id", sa.String(length=32), nullable=True),
        sa.Column("locked_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "received_bytes >= 0 AND received_bytes <= length", name=op.f("ck_uploads_received_within_length")
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_uploads_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
    )
    op.create_index(op.f("ix_uploads_expires_at_ms"), "uploads", ["expires_at_ms"], unique=False)
    op.create_index(op.f("ix_uploads_owner_id"), "uploads", ["owner_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_uploads_owner_id"), table_name="uploads")
    op.drop_index(op.f("ix_uploads_expires_at_ms"), table_name="uploads")
    op.drop_table("uploads")
    op.drop_table("message_media")
    op.drop_index(op.f("ix_media_owner_id"), table_name="media")
    op.drop_table("media")
