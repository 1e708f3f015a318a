"""The relational schema, as SQLAlchemy Core tables shared by every service and by Alembic.

Timestamps are integer epoch milliseconds (`*_ms`): they compare the same way on SQLite and
PostgreSQL, carry their unit in their name, and cost 8 bytes. Ids are 64-bit integers; on SQLite
the primary keys must be plain INTEGER to alias the rowid and autoincrement, hence the variant.

The inbox is fan-out on write: one message to a conversation of N members writes N `inbox` rows,
each with the next gap-free `seq` of its user. `users.inbox_head` is the per-user counter, bumped
under a row lock in the send transaction; seq allocation never uses a sequence object because
sequences leave gaps on rollback and a client must be able to trust "head - cursor = unread".
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Deterministic constraint names, so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

Id = BigInteger().with_variant(Integer(), "sqlite")
"""64-bit id; INTEGER on SQLite so that `INTEGER PRIMARY KEY` aliases the rowid."""

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("handle", String(64), nullable=False),
    Column("inbox_head", BigInteger, nullable=False, server_default="0"),
    Column("created_at_ms", BigInteger, nullable=False),
    UniqueConstraint("handle"),
    CheckConstraint("inbox_head >= 0", name="inbox_head_non_negative"),
)

devices = Table(
    "devices",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False, server_default=""),
    Column("push_provider", String(8), nullable=True),
    Column("push_token", String(4096), nullable=True),
    Column("push_environment", String(16), nullable=True),
    Column("push_registered_at_ms", BigInteger, nullable=True),
    # The last wake-up sent to this device: it is not woken again until it acks or repush_after_s.
    Column("last_push_at_ms", BigInteger, nullable=True),
    Column("last_push_seq", BigInteger, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    CheckConstraint("push_provider IS NULL OR push_provider IN ('apns', 'fcm')", name="push_provider_known"),
    Index(None, "user_id"),
    Index(None, "push_provider", "push_token"),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),
    Column("title", String(128), nullable=True),
    Column("created_by", Id, ForeignKey("users.id"), nullable=False),
    # "<low user id>:<high user id>" for direct conversations: makes a pair's conversation unique.
    Column("direct_key", String(48), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    UniqueConstraint("direct_key"),
    CheckConstraint("kind IN ('direct', 'group')", name="kind_known"),
)

members = Table(
    "members",
    metadata,
    Column("conversation_id", Id, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(8), nullable=False),
    # History a member may read starts after this message id: people added to a group later do not
    # see what was said before they joined.
    Column("visible_after_message_id", BigInteger, nullable=False, server_default="0"),
    Column("joined_at_ms", BigInteger, nullable=False),
    CheckConstraint("role IN ('admin', 'member')", name="role_known"),
    Index(None, "user_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("conversation_id", Id, ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("sender_id", Id, ForeignKey("users.id"), nullable=False),
    Column("sender_device_id", Id, nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("body", Text, nullable=False),
    # JSON array of media ids; opaque to the database.
    Column("media", Text, nullable=False, server_default="[]"),
    Column("sent_at_ms", BigInteger, nullable=False),
    UniqueConstraint("sender_id", "idempotency_key"),
    Index(None, "conversation_id", "id"),
)

inbox = Table(
    "inbox",
    metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("message_id", Id, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
)

device_cursors = Table(
    "device_cursors",
    metadata,
    Column("device_id", Id, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("acked_seq", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

push_jobs = Table(
    "push_jobs",
    metadata,
    Column("device_id", Id, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Id, nullable=False),
    # The inbox seq the device must reach; later messages raise it (many messages -> one push).
    Column("seq", BigInteger, nullable=False),
    Column("not_before_ms", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # A worker's claim; expires so that a killed worker's jobs are picked up again. Only the holder
    # of `claim_id` may finish the job.
    Column("claimed_until_ms", BigInteger, nullable=True),
    Column("claim_id", String(32), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Index(None, "not_before_ms"),
)

# --- media -------------------------------------------------------------------------------------------
# A `media` row exists only for a complete object whose size and sha256 were checked; the id is random
# (unguessable) and is also the object's key suffix in the blob store.
media = Table(
    "media",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Index(None, "owner_id"),
    CheckConstraint("size >= 0", name="size_non_negative"),
)

# Which conversations a media object was sent to: members of those may read it.
message_media = Table(
    "message_media",
    metadata,
    Column("media_id", String(64), ForeignKey("media.id", ondelete="CASCADE"), primary_key=True),
    Column("conversation_id", Id, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
)

# A resumable (tus) upload in progress. `received_bytes` is the tus Upload-Offset. A PATCH holds the
# row's lock (`lock_id` until `locked_until_ms`) so two requests never append to one upload at once.
# On S3, bytes that do not yet fill a multipart part wait in a "tail" object of `tail_bytes`.
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("length", BigInteger, nullable=False),
    Column("received_bytes", BigInteger, nullable=False, server_default="0"),
    Column("content_type", String(255), nullable=False),
    Column("metadata", Text, nullable=False, server_default=""),
    Column("s3_upload_id", String(1024), nullable=True),
    # JSON [[part_number, etag], ...]
    Column("s3_parts", Text, nullable=False, server_default="[]"),
    Column("tail_bytes", BigInteger, nullable=False, server_default="0"),
    Column("lock_id", String(32), nullable=True),
    Column("locked_until_ms", BigInteger, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Index(None, "expires_at_ms"),
    Index(None, "owner_id"),
    CheckConstraint("received_bytes >= 0 AND received_bytes <= length", name="received_within_length"),
)
