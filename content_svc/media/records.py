"""Media and upload rows: units of database work, run on the asyncio side like content_svc/store.py.

Access is decided here, next to the query: a user may read media they uploaded, or media sent in a
conversation they are a member of. Anything else, including ids that do not exist, is the same 404.
An upload is locked by the request appending to it (`lock_id`, expiring so a crashed request does
not block the upload forever), and its offset moves only by the holder of that lock.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from content_svc.errors import Conflict, NotFound, Unprocessable
from content_svc.media.blobs import UploadState
from content_svc.schemas import MEDIA_ID_PATTERN
from pingpull.db import dialects
from pingpull.db.schema import media, members, message_media, uploads

_MEDIA_ID = re.compile(MEDIA_ID_PATTERN)


def looks_like_media_id(value: str) -> bool:
    """The schema's shape exactly (a trailing newline too is refused, as the schema refuses it)."""
    return _MEDIA_ID.fullmatch(value) is not None


def new_media_id() -> str:
    """32 URL-safe characters, 192 random bits: unguessable, and valid as a path segment and S3 key."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class MediaRecord:
    id: str
    owner_id: int
    size: int
    sha256: str
    content_type: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class UploadRecord:
    state: UploadState
    owner_id: int
    metadata: str
    created_at_ms: int
    expires_at_ms: int
    complete: bool  # a media row exists: the upload finished and its row is kept for HEAD answers


class UploadBusy(Conflict):
    slug = "upload-busy"
    title = "Another request is appending to this upload"


class OffsetMismatch(Conflict):
    slug = "upload-offset-mismatch"
    title = "Upload-Offset does not match the bytes received so far"


async def insert_media(conn: AsyncConnection, record: MediaRecord) -> None:
    await conn.execute(
        insert(media).values(
            id=record.id,
            owner_id=record.owner_id,
            size=record.size,
            sha256=record.sha256,
            content_type=record.content_type,
            created_at_ms=record.created_at_ms,
        )
    )


def _media(row: object) -> MediaRecord:
    return MediaRecord(
        id=row.id,  # type: ignore[attr-defined]
        owner_id=row.owner_id,  # type: ignore[attr-defined]
        size=row.size,  # type: ignore[attr-defined]
        sha256=row.sha256,  # type: ignore[attr-defined]
        content_type=row.content_type,  # type: ignore[attr-defined]
        created_at_ms=row.created_at_ms,  # type: ignore[attr-defined]
    )


async def readable_media(conn: AsyncConnection, user_id: int, media_id: str) -> MediaRecord:
    shared_with_user = exists(
        select(message_media.c.media_id)
        .join(members, members.c.conversation_id == message_media.c.conversation_id)
        .where(message_media.c.media_id == media.c.id, members.c.user_id == user_id)
    )
    row = (
        await conn.execute(
            select(media).where(media.c.id == media_id, or_(media.c.owner_id == user_id, shared_with_user))
        )
    ).first()
    if row is None:
        raise NotFound("no such media")
    return _media(row)


async def attach_to_conversation(
    conn: AsyncConnection, sender_id: int, conversation_id: int, media_ids: Sequence[str]
) -> None:
    """Called inside the send transaction: the sender must own every id; then its readers widen."""
    wanted = sorted(set(media_ids))
    if not wanted:
        return
    owned = set(
        (
            await conn.execute(
                select(media.c.id).where(media.c.id.in_(wanted), media.c.owner_id == sender_id)
            )
        ).scalars()
    )
    unknown = [m for m in wanted if m not in owned]
    if unknown:
        raise Unprocessable("media must be uploaded by the sender first", unknown_media_ids=unknown)
    statement = dialects.insert(conn, message_media).on_conflict_do_nothing(
        index_elements=["media_id", "conversation_id"]
    )
    await conn.execute(statement, [{"media_id": m, "conversation_id": conversation_id} for m in wanted])


async def delete_media(conn: AsyncConnection, media_id: str) -> None:
    await conn.execute(delete(media).where(media.c.id == media_id))


# --- uploads -------------------------------------------------------------------------------------------


def _upload(row: object, complete: bool) -> UploadRecord:
    r = row
    state = UploadState(
        upload_id=r.id,  # type: ignore[attr-defined]
        length=r.length,  # type: ignore[attr-defined]
        received_bytes=r.received_bytes,  # type: ignore[attr-defined]
        content_type=r.content_type,  # type: ignore[attr-defined]
        s3_upload_id=r.s3_upload_id,  # type: ignore[attr-defined]
        s3_parts=tuple((int(n), str(e)) for n, e in json.loads(r.s3_parts)),  # type: ignore[attr-defined]
        tail_bytes=r.tail_bytes,  # type: ignore[attr-defined]
    )
    return UploadRecord(
        state=state,
        owner_id=r.owner_id,  # type: ignore[attr-defined]
        metadata=r.metadata,  # type: ignore[attr-defined]
        created_at_ms=r.created_at_ms,  # type: ignore[attr-defined]
        expires_at_ms=r.expires_at_ms,  # type: ignore[attr-defined]
        complete=complete,
    )


async def create_upload(
    conn: AsyncConnection,
    *,
    upload_id: str,
    owner_id: int,
    length: int,
    content_type: str,
    metadata: str,
    now_ms: int,
    expires_at_ms: int,
) -> None:
    await conn.execute(
        insert(uploads).values(
            id=upload_id,
            owner_id=owner_id,
            length=length,
            content_type=content_type,
            metadata=metadata,
            created_at_ms=now_ms,
            expires_at_ms=expires_at_ms,
        )
    )


async def get_upload(conn: AsyncConnection, user_id: int, upload_id: str, now_ms: int) -> UploadRecord:
    row = (
        await conn.execute(select(uploads).where(uploads.c.id == upload_id, uploads.c.owner_id == user_id))
    ).first()
    if row is None:
        raise NotFound("no such upload")
    done = row.received_bytes == row.length and await _media_exists(conn, upload_id)
    if not done and row.expires_at_ms <= now_ms:
        raise NotFound("the upload expired")
    return _upload(row, done)


async def _media_exists(conn: AsyncConnection, media_id: str) -> bool:
    return (await conn.execute(select(media.c.id).where(media.c.id == media_id))).first() is not None


async def lock_upload(
    conn: AsyncConnection,
    *,
    user_id: int,
    upload_id: str,
    offset: int,
    lock_id: str,
    now_ms: int,
    lock_ttl_ms: int,
) -> UploadRecord:
    """Take the upload for one PATCH at `offset`; 409 if busy or the offset is not the server's."""
    record = await get_upload(conn, user_id, upload_id, now_ms)
    if record.complete:
        raise OffsetMismatch("the upload is already complete", upload_offset=record.state.received_bytes)
    if record.state.received_bytes != offset:
        raise OffsetMismatch(
            f"the server has {record.state.received_bytes} bytes, not {offset}",
            upload_offset=record.state.received_bytes,
        )
    taken = await conn.execute(
        update(uploads)
        .where(
            uploads.c.id == upload_id,
            uploads.c.received_bytes == offset,
            or_(uploads.c.lock_id.is_(None), uploads.c.locked_until_ms <= now_ms),
        )
        .values(lock_id=lock_id, locked_until_ms=now_ms + lock_ttl_ms)
    )
    if taken.rowcount != 1:
        raise UploadBusy("another request is appending to this upload; retry after it ends")
    return record


async def save_progress(
    conn: AsyncConnection, *, lock_id: str, state: UploadState, expires_at_ms: int, release: bool
) -> bool:
    """Record the new offset (only the lock holder may). Returns False if the lock was lost."""
    values: dict[str, object] = {
        "received_bytes": state.received_bytes,
        "s3_upload_id": state.s3_upload_id,
        "s3_parts": json.dumps([list(p) for p in state.s3_parts]),
        "tail_bytes": state.tail_bytes,
        "expires_at_ms": expires_at_ms,
    }
    if release:
        values.update(lock_id=None, locked_until_ms=None)
    done = await conn.execute(
        update(uploads).where(uploads.c.id == state.upload_id, uploads.c.lock_id == lock_id).values(**values)
    )
    return done.rowcount == 1


async def renew_lock(conn: AsyncConnection, upload_id: str, lock_id: str, until_ms: int) -> bool:
    renewed = await conn.execute(
        update(uploads)
        .where(uploads.c.id == upload_id, uploads.c.lock_id == lock_id)
        .values(locked_until_ms=until_ms)
    )
    return renewed.rowcount == 1


async def release_lock(conn: AsyncConnection, upload_id: str, lock_id: str) -> None:
    await conn.execute(
        update(uploads)
        .where(uploads.c.id == upload_id, uploads.c.lock_id == lock_id)
        .values(lock_id=None, locked_until_ms=None)
    )


async def finish_upload(conn: AsyncConnection, lock_id: str, record: MediaRecord, keep_until_ms: int) -> None:
    """The verified object becomes media; the upload row stays (unlocked) until `keep_until_ms` so a
    client that lost the last answer can still HEAD it and see the upload complete."""
    released = await conn.execute(
        update(uploads)
        .where(uploads.c.id == record.id, uploads.c.lock_id == lock_id)
        .values(lock_id=None, locked_until_ms=None, tail_bytes=0, expires_at_ms=keep_until_ms)
    )
    if released.rowcount != 1:
        raise UploadBusy("the upload's lock expired before it completed; retry")
    await insert_media(conn, record)


async def take_upload_for_removal(
    conn: AsyncConnection, user_id: int, upload_id: str, now_ms: int
) -> UploadRecord:
    """tus termination: the row goes now; the caller drops the bytes."""
    record = await get_upload(conn, user_id, upload_id, now_ms)
    if record.complete:
        raise Conflict("a completed upload is media now; it cannot be terminated")
    gone = await conn.execute(
        delete(uploads).where(
            uploads.c.id == upload_id,
            or_(uploads.c.lock_id.is_(None), uploads.c.locked_until_ms <= now_ms),
        )
    )
    if gone.rowcount != 1:
        raise UploadBusy("a request is appending to this upload")
    return record


async def take_expired_uploads(conn: AsyncConnection, now_ms: int, limit: int) -> list[UploadRecord]:
    """Remove up to `limit` expired, unlocked upload rows and return them so their bytes can go.

    A finished upload's row served only HEAD: the caller must drop bytes only of unfinished ones."""
    rows = (
        await conn.execute(
            select(uploads)
            .where(
                uploads.c.expires_at_ms <= now_ms,
                or_(uploads.c.lock_id.is_(None), uploads.c.locked_until_ms <= now_ms),
            )
            .order_by(uploads.c.expires_at_ms)
            .limit(limit)
        )
    ).all()
    taken: list[UploadRecord] = []
    for row in rows:
        gone = await conn.execute(
            delete(uploads).where(
                and_(uploads.c.id == row.id, uploads.c.expires_at_ms <= now_ms),
                or_(uploads.c.lock_id.is_(None), uploads.c.locked_until_ms <= now_ms),
            )
        )
        if gone.rowcount == 1:
            taken.append(_upload(row, row.received_bytes == row.length and await _media_exists(conn, row.id)))
    return taken
