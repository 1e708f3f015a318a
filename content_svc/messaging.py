"""The send transaction, history pages, the inbox pull and the ack: units of database work.

The send transaction is the heart of correctness. In ONE transaction it
  1. returns the original message if (sender, Idempotency-Key) was already used (a retry),
  2. inserts the message (a concurrent twin blocks on the unique key, then finds the winner's row),
  3. bumps `users.inbox_head` of every member under row locks taken in user-id order (so concurrent
     senders to overlapping groups cannot deadlock) and writes one inbox row per member at that head,
  4. upserts one push job per recipient device with a push token: at most one pending job per
     device, its seq raised to the newest, its due time kept at the earliest.
Signals are published only after commit, by the caller; a crash in between loses no message, only a
hint, and the push job already in the outbox is the fallback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from content_svc.errors import IdempotencyKeyReused, NotFound, Unprocessable
from content_svc.store import member_role
from pingpull.db import dialects
from pingpull.db.schema import device_cursors, devices, inbox, members, messages, push_jobs, users


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    conversation_id: int
    sender_id: int
    body: str
    media: tuple[str, ...]
    sent_at_ms: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "sender_id": self.sender_id,
            "body": self.body,
            "media": list(self.media),
            "sent_at_ms": self.sent_at_ms,
        }


@dataclass(frozen=True, slots=True)
class Recipient:
    """A member's new inbox head and the devices to signal about it."""

    user_id: int
    head: int
    device_ids: tuple[int, ...]
    pushable_device_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SendResult:
    message: Message
    created: bool
    recipients: tuple[Recipient, ...] = field(default=())


def _message(row: Row[Any] | Any) -> Message:
    return Message(
        id=row.id,
        conversation_id=row.conversation_id,
        sender_id=row.sender_id,
        body=row.body,
        media=tuple(json.loads(row.media)),
        sent_at_ms=row.sent_at_ms,
    )


_MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.conversation_id,
    messages.c.sender_id,
    messages.c.body,
    messages.c.media,
    messages.c.sent_at_ms,
)


async def send_message(
    conn: AsyncConnection,
    *,
    sender_id: int,
    sender_device_id: int,
    conversation_id: int,
    idempotency_key: str,
    body: str,
    media: Sequence[str],
    now_ms: int,
    ack_grace_ms: int,
) -> SendResult:
    existing = await _find_by_key(conn, sender_id, idempotency_key)
    if existing is not None:
        return _replay(existing, conversation_id, body, media)
    if await member_role(conn, sender_id, conversation_id) is None:
        raise NotFound("no such conversation")

    inserted = await conn.execute(
        dialects.insert(conn, messages)
        .values(
            conversation_id=conversation_id,
            sender_id=sender_id,
            sender_device_id=sender_device_id,
            idempotency_key=idempotency_key,
            body=body,
            media=json.dumps(list(media)),
            sent_at_ms=now_ms,
        )
        .on_conflict_do_nothing(index_elements=["sender_id", "idempotency_key"])
        .returning(*_MESSAGE_COLUMNS)
    )
    row = inserted.first()
    if row is None:
        # A concurrent request with the same key committed first; on PostgreSQL the insert waited for it.
        winner = await _find_by_key(conn, sender_id, idempotency_key)
        if winner is None:  # the twin rolled back after we waited: let the caller retry cleanly
            raise Unprocessable("a concurrent request with this Idempotency-Key failed; retry")
        return _replay(winner, conversation_id, body, media)
    message = _message(row)

    member_ids = (
        (
            await conn.execute(
                select(members.c.user_id)
                .where(members.c.conversation_id == conversation_id)
                .order_by(members.c.user_id)
            )
        )
        .scalars()
        .all()
    )
    heads = await _bump_heads(conn, list(member_ids))
    await conn.execute(
        insert(inbox), [{"user_id": uid, "seq": heads[uid], "message_id": message.id} for uid in member_ids]
    )

    device_rows = (
        await conn.execute(
            select(devices.c.id, devices.c.user_id, devices.c.push_token)
            .where(devices.c.user_id.in_(member_ids))
            .order_by(devices.c.id)
        )
    ).all()
    signal_to: dict[int, list[int]] = {uid: [] for uid in member_ids}
    push_to: dict[int, list[int]] = {uid: [] for uid in member_ids}
    for device in device_rows:
        if device.id != sender_device_id:
            signal_to[device.user_id].append(device.id)
        # The sender's own devices sync through the inbox but are never woken for their own words.
        if device.user_id != sender_id and device.push_token is not None:
            push_to[device.user_id].append(device.id)

    jobs = [
        {
            "device_id": device_id,
            "user_id": uid,
            "seq": heads[uid],
            "not_before_ms": now_ms + ack_grace_ms,
            "attempts": 0,
            "created_at_ms": now_ms,
        }
        for uid in member_ids
        for device_id in push_to[uid]
    ]
    if jobs:
        stmt = dialects.insert(conn, push_jobs)
        stmt = stmt.on_conflict_do_update(
            index_elements=["device_id"],
            set_={
                "seq": dialects.greatest(conn, push_jobs.c.seq, stmt.excluded.seq),
                "not_before_ms": dialects.least(conn, push_jobs.c.not_before_ms, stmt.excluded.not_before_ms),
            },
        )
        await conn.execute(stmt, jobs)

    recipients = tuple(
        Recipient(uid, heads[uid], tuple(signal_to[uid]), tuple(push_to[uid])) for uid in member_ids
    )
    return SendResult(message=message, created=True, recipients=recipients)


async def _bump_heads(conn: AsyncConnection, user_ids: list[int]) -> dict[int, int]:
    """Add one to each user's inbox head; returns the new heads. Callers pass ids sorted."""
    if dialects.is_postgres(conn):
        # Row locks in id order: two senders to overlapping member sets queue instead of deadlocking.
        # NO KEY UPDATE, not UPDATE: the foreign-key checks of concurrent inserts (a message's
        # sender, inbox rows) hold KEY SHARE locks on these rows, which FOR UPDATE would wait on
        # (and deadlock with, found by the overlapping-groups test); FOR NO KEY UPDATE does not.
        result = await conn.execute(
            text(
                "UPDATE users SET inbox_head = inbox_head + 1 WHERE id IN "
                "(SELECT id FROM users WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE) "
                "RETURNING id, inbox_head"
            ),
            {"ids": user_ids},
        )
    else:
        # SQLite write transactions are serialised by BEGIN IMMEDIATE: no row locks to order.
        result = await conn.execute(
            update(users)
            .where(users.c.id.in_(user_ids))
            .values(inbox_head=users.c.inbox_head + 1)
            .returning(users.c.id, users.c.inbox_head)
        )
    heads = {row.id: row.inbox_head for row in result}
    if len(heads) != len(user_ids):
        raise NotFound("a member's account no longer exists")
    return heads


async def _find_by_key(conn: AsyncConnection, sender_id: int, key: str) -> Message | None:
    row = (
        await conn.execute(
            select(*_MESSAGE_COLUMNS).where(
                messages.c.sender_id == sender_id, messages.c.idempotency_key == key
            )
        )
    ).first()
    return None if row is None else _message(row)


def _replay(existing: Message, conversation_id: int, body: str, media: Sequence[str]) -> SendResult:
    if (existing.conversation_id, existing.body, existing.media) != (conversation_id, body, tuple(media)):
        raise IdempotencyKeyReused("the Idempotency-Key was used for a different message")
    return SendResult(message=existing, created=False)


async def make_pushes_due(conn: AsyncConnection, device_ids: Sequence[int], now_ms: int) -> None:
    """No gateway holds these devices: their pending push jobs are due now, not after the ack grace."""
    await conn.execute(
        update(push_jobs)
        .where(push_jobs.c.device_id.in_(list(device_ids)), push_jobs.c.not_before_ms > now_ms)
        .values(not_before_ms=now_ms)
    )


# --- reading -----------------------------------------------------------------------------------


async def history(
    conn: AsyncConnection, user_id: int, conversation_id: int, before: int | None, limit: int
) -> list[Message]:
    """A page of a conversation's messages, newest first, only those the member may see."""
    visible_after = (
        await conn.execute(
            select(members.c.visible_after_message_id).where(
                members.c.conversation_id == conversation_id, members.c.user_id == user_id
            )
        )
    ).scalar_one_or_none()
    if visible_after is None:
        raise NotFound("no such conversation")
    query = select(*_MESSAGE_COLUMNS).where(
        messages.c.conversation_id == conversation_id, messages.c.id > visible_after
    )
    if before is not None:
        query = query.where(messages.c.id < before)
    rows = await conn.execute(query.order_by(messages.c.id.desc()).limit(limit))
    return [_message(r) for r in rows]


async def pull_inbox(
    conn: AsyncConnection, user_id: int, after: int, limit: int
) -> tuple[int, list[tuple[int, Message]]]:
    """The user's head and up to `limit` inbox entries with seq > after, in seq order."""
    head = (await conn.execute(select(users.c.inbox_head).where(users.c.id == user_id))).scalar_one()
    rows = await conn.execute(
        select(inbox.c.seq, *_MESSAGE_COLUMNS)
        .join(messages, messages.c.id == inbox.c.message_id)
        .where(inbox.c.user_id == user_id, inbox.c.seq > after)
        .order_by(inbox.c.seq)
        .limit(limit)
    )
    return head, [(r.seq, _message(r)) for r in rows]


async def ack(conn: AsyncConnection, user_id: int, device_id: int, seq: int, now_ms: int) -> int:
    """Move the device's cursor forward to `seq` (never back); returns the cursor after the ack."""
    head = (await conn.execute(select(users.c.inbox_head).where(users.c.id == user_id))).scalar_one()
    if seq > head:
        raise Unprocessable(f"cannot acknowledge seq {seq}: the inbox head is {head}", head=head)
    stmt = dialects.insert(conn, device_cursors).values(
        device_id=device_id, acked_seq=seq, updated_at_ms=now_ms
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["device_id"],
        set_={
            "acked_seq": dialects.greatest(conn, device_cursors.c.acked_seq, stmt.excluded.acked_seq),
            "updated_at_ms": stmt.excluded.updated_at_ms,
        },
    )
    await conn.execute(stmt)
    # The device has everything its pending push would have announced: drop the wake-up.
    await conn.execute(delete(push_jobs).where(push_jobs.c.device_id == device_id, push_jobs.c.seq <= seq))
    cursor: int = (
        await conn.execute(select(device_cursors.c.acked_seq).where(device_cursors.c.device_id == device_id))
    ).scalar_one()
    return cursor
