"""The send transaction, history pages, the inbox pull and the ack: units of database work.

The send transaction is the heart of correctness. In ONE transaction it
  1. takes row locks on every member's `users` row in user-id order (so concurrent senders to
     overlapping groups cannot deadlock), provided the sender is a member and the Idempotency-Key is
     new; otherwise it returns the original message (a retry) or 404,
  2. stamps `sent_at_ms` (after the locks, so stamps follow commit order per inbox),
  3. inserts the message (a concurrent twin that got past step 1 finds the unique key taken and
     answers with the winner's row), bumps `users.inbox_head` of every member and writes one inbox
     row per member at that head,
  4. upserts one push job per recipient device with a push token: at most one pending job per
     device, its seq raised to the newest, its due time kept at the earliest.
On PostgreSQL steps 3 and 4 are one statement (data-modifying CTEs, RETURNING what the signals
need), so a send is BEGIN, two statements, COMMIT; SQLite runs them as separate in-process calls.
Signals are published only after commit, by the caller; a crash in between loses no message, only a
hint, and the push job already in the outbox is the fallback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, and_, delete, exists, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from content_svc.errors import IdempotencyKeyReused, NotFound, Unprocessable
from content_svc.media.records import attach_to_conversation
from pingpull.config import ContentSettings
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
    ack_grace_ms: int,
    clock_ms: Callable[[], int] | None = None,
    now_ms: int | None = None,
) -> SendResult:
    """The send transaction. `sent_at_ms` is read from `clock_ms` once the members' inbox rows are
    locked (on SQLite: once the write lock is held), so time stamps follow commit order per inbox
    even when the transaction waited or was retried. `now_ms` (a time read before the transaction)
    is only for callers that have no clock to pass."""
    if clock_ms is None:
        if now_ms is None:
            raise TypeError("send_message needs clock_ms (or now_ms)")
        clock_ms = functools.partial(int, now_ms)
    # 1. One statement: lock the members' user rows in id order (PostgreSQL), if the sender is a
    #    member and the key is new. No rows: a replay, a non-member, or an emptied conversation.
    member_ids = list(
        (await conn.execute(_lock_members(conn, sender_id, conversation_id, idempotency_key))).scalars()
    )
    if not member_ids:
        return await _not_sendable(conn, sender_id, conversation_id, idempotency_key, body, media)
    sent_at_ms = clock_ms()
    fresh = _Fresh(
        conversation_id=conversation_id,
        sender_id=sender_id,
        sender_device_id=sender_device_id,
        idempotency_key=idempotency_key,
        body=body,
        media=json.dumps(list(media)),
        sent_at_ms=sent_at_ms,
        not_before_ms=sent_at_ms + ack_grace_ms,
    )
    # 2. Insert the message, bump the heads, write the inbox rows and the push jobs.
    if dialects.is_postgres(conn):
        written = await _write_postgres(conn, fresh, member_ids)
    else:
        written = await _write_sqlite(conn, fresh, member_ids)
    if written is None:
        # A concurrent request with the same key committed first (we waited for it on the unique key or
        # the row locks): nothing was written; answer with the winner's message.
        winner = await _find_by_key(conn, sender_id, idempotency_key)
        if winner is None:  # the twin rolled back after we waited: let the caller retry cleanly
            raise Unprocessable("a concurrent request with this Idempotency-Key failed; retry")
        return _replay(winner, conversation_id, body, media)
    message, heads, devices_of = written
    # The sender must own the media; from now on the conversation's members may read it.
    await attach_to_conversation(conn, sender_id, conversation_id, media)
    recipients = tuple(
        Recipient(
            uid,
            heads[uid],
            tuple(d for d, _ in devices_of.get(uid, ()) if d != sender_device_id),
            # The sender's own devices sync through the inbox but are never woken for their own words.
            tuple(d for d, pushable in devices_of.get(uid, ()) if pushable and uid != sender_id),
        )
        for uid in member_ids
    )
    return SendResult(message=message, created=True, recipients=recipients)


@dataclass(frozen=True, slots=True)
class _Fresh:
    """The new message's row, stamped."""

    conversation_id: int
    sender_id: int
    sender_device_id: int
    idempotency_key: str
    body: str
    media: str
    sent_at_ms: int
    not_before_ms: int

    def message_row(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "sender_id": self.sender_id,
            "sender_device_id": self.sender_device_id,
            "idempotency_key": self.idempotency_key,
            "body": self.body,
            "media": self.media,
            "sent_at_ms": self.sent_at_ms,
        }


# (message, new head per member, [(device id, has a push token)] per member); None: a twin won.
_Written = tuple[Message, dict[int, int], dict[int, list[tuple[int, bool]]]] | None


def _lock_members(conn: AsyncConnection, sender_id: int, conversation_id: int, key: str) -> Any:
    in_conversation = members.c.conversation_id == conversation_id
    query = (
        select(users.c.id)
        .where(
            users.c.id.in_(select(members.c.user_id).where(in_conversation)),
            exists().where(in_conversation, members.c.user_id == sender_id),
            ~exists().where(messages.c.sender_id == sender_id, messages.c.idempotency_key == key),
        )
        .order_by(users.c.id)
    )
    if dialects.is_postgres(conn):
        # Row locks in id order: two senders to overlapping member sets queue instead of deadlocking.
        # NO KEY UPDATE, not UPDATE: the foreign-key checks of concurrent inserts (a message's
        # sender, inbox rows) hold KEY SHARE locks on these rows, which FOR UPDATE would wait on
        # (and deadlock with, found by the overlapping-groups test); FOR NO KEY UPDATE does not.
        # SQLite serialises write transactions with BEGIN IMMEDIATE: no row locks to take.
        query = query.with_for_update(key_share=True)
    return query


async def _not_sendable(
    conn: AsyncConnection,
    sender_id: int,
    conversation_id: int,
    key: str,
    body: str,
    media: Sequence[str],
) -> SendResult:
    existing = await _find_by_key(conn, sender_id, key)
    if existing is not None:
        return _replay(existing, conversation_id, body, media)
    raise NotFound("no such conversation")


# PostgreSQL: the message, the head bumps, the inbox rows and the push-job upserts in ONE statement.
# Data-modifying CTEs run on one snapshot; each reads only the others' RETURNING rows. When the
# message insert conflicts (a twin committed first), `msg` is empty and so is everything after it.
_SEND_POSTGRES = text(
    """
    WITH msg AS (
        INSERT INTO messages
            (conversation_id, sender_id, sender_device_id, idempotency_key, body, media, sent_at_ms)
        VALUES
            (:conversation_id, :sender_id, :sender_device_id, :idempotency_key, :body, :media, :sent_at_ms)
        ON CONFLICT (sender_id, idempotency_key) DO NOTHING
        RETURNING id, conversation_id, sender_id, body, media, sent_at_ms
    ), heads AS (
        UPDATE users SET inbox_head = users.inbox_head + 1
        FROM msg
        WHERE users.id = ANY(:member_ids)
        RETURNING users.id, users.inbox_head
    ), inboxed AS (
        INSERT INTO inbox (user_id, seq, message_id)
        SELECT heads.id, heads.inbox_head, msg.id FROM heads CROSS JOIN msg
    ), jobs AS (
        INSERT INTO push_jobs (device_id, user_id, seq, not_before_ms, attempts, created_at_ms)
        SELECT d.id, d.user_id, heads.inbox_head, CAST(:not_before_ms AS BIGINT), 0,
               CAST(:sent_at_ms AS BIGINT)
        FROM devices AS d JOIN heads ON heads.id = d.user_id
        WHERE d.push_token IS NOT NULL AND d.user_id <> :sender_id
        ON CONFLICT (device_id) DO UPDATE SET
            seq = GREATEST(push_jobs.seq, excluded.seq),
            not_before_ms = LEAST(push_jobs.not_before_ms, excluded.not_before_ms)
    )
    SELECT msg.id, msg.conversation_id, msg.sender_id, msg.body, msg.media, msg.sent_at_ms,
           heads.id AS user_id, heads.inbox_head AS head,
           d.id AS device_id, d.push_token IS NOT NULL AS pushable
    FROM msg CROSS JOIN heads LEFT JOIN devices AS d ON d.user_id = heads.id
    ORDER BY heads.id, d.id
    """
)


async def _write_postgres(conn: AsyncConnection, fresh: _Fresh, member_ids: list[int]) -> _Written:
    rows = (
        await conn.execute(
            _SEND_POSTGRES,
            {**fresh.message_row(), "member_ids": member_ids, "not_before_ms": fresh.not_before_ms},
        )
    ).all()
    if not rows:
        return None
    heads: dict[int, int] = {}
    devices_of: dict[int, list[tuple[int, bool]]] = {}
    for row in rows:
        heads[row.user_id] = row.head
        if row.device_id is not None:
            devices_of.setdefault(row.user_id, []).append((row.device_id, bool(row.pushable)))
    return _message(rows[0]), heads, devices_of


async def _write_sqlite(conn: AsyncConnection, fresh: _Fresh, member_ids: list[int]) -> _Written:
    # The write lock is held since BEGIN IMMEDIATE; the statements are cheap in-process calls.
    row = (
        await conn.execute(
            dialects.insert(conn, messages)
            .values(**fresh.message_row())
            .on_conflict_do_nothing(index_elements=["sender_id", "idempotency_key"])
            .returning(*_MESSAGE_COLUMNS)
        )
    ).first()
    if row is None:
        return None
    message = _message(row)
    bumped = await conn.execute(
        update(users)
        .where(users.c.id.in_(member_ids))
        .values(inbox_head=users.c.inbox_head + 1)
        .returning(users.c.id, users.c.inbox_head)
    )
    heads = {r.id: r.inbox_head for r in bumped}
    await conn.execute(
        insert(inbox), [{"user_id": uid, "seq": heads[uid], "message_id": message.id} for uid in member_ids]
    )
    device_rows = await conn.execute(
        select(devices.c.id, devices.c.user_id, devices.c.push_token)
        .where(devices.c.user_id.in_(member_ids))
        .order_by(devices.c.id)
    )
    devices_of: dict[int, list[tuple[int, bool]]] = {}
    jobs = []
    for device in device_rows:
        pushable = device.push_token is not None
        devices_of.setdefault(device.user_id, []).append((device.id, pushable))
        if pushable and device.user_id != fresh.sender_id:
            jobs.append(
                {
                    "device_id": device.id,
                    "user_id": device.user_id,
                    "seq": heads[device.user_id],
                    "not_before_ms": fresh.not_before_ms,
                    "attempts": 0,
                    "created_at_ms": fresh.sent_at_ms,
                }
            )
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
    return message, heads, devices_of


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
    """The user's head and up to `limit` inbox entries with seq > after, in seq order.

    One statement, so head and entries come from one snapshot: the user's row outer-joined to the
    entries, which gives one row of NULL entry columns when there is nothing new (an empty poll)."""
    # Two chained LEFT JOINs, not `users LEFT JOIN (inbox JOIN messages)`: SQLite materialises such a
    # nested join whole (every inbox row, per pull). Every inbox row has its message (a foreign key,
    # ON DELETE CASCADE), so the second outer join loses nothing an inner join would keep.
    entries = users.outerjoin(inbox, and_(inbox.c.user_id == users.c.id, inbox.c.seq > after)).outerjoin(
        messages, messages.c.id == inbox.c.message_id
    )
    rows = (
        await conn.execute(
            select(users.c.inbox_head, inbox.c.seq, *_MESSAGE_COLUMNS)
            .select_from(entries)
            .where(users.c.id == user_id)
            .order_by(inbox.c.seq)
            .limit(limit)
        )
    ).all()
    if not rows:
        raise NotFound("no such user")
    return int(rows[0].inbox_head), [(r.seq, _message(r)) for r in rows if r.seq is not None]


def page_limit(asked: int | None, settings: ContentSettings) -> int:
    """How many inbox entries one pull returns: what the client asked for, within the service's cap."""
    return min(asked or settings.default_page_items, settings.max_page_items)


def inbox_page(head: int, entries: Sequence[tuple[int, Message]]) -> dict[str, Any]:
    """The body of `GET /v1/inbox` (the route and the inbox fast lane answer the same)."""
    return {"head": head, "items": [{"seq": seq, "message": m.as_json()} for seq, m in entries]}


# PostgreSQL: the ack in one statement. `moved` writes the cursor only when seq <= head; `dropped`
# deletes the device's push job only if the cursor was written.
_ACK_POSTGRES = text(
    """
    WITH head AS (
        SELECT inbox_head FROM users WHERE id = :user_id
    ), moved AS (
        INSERT INTO device_cursors (device_id, acked_seq, updated_at_ms)
        SELECT CAST(:device_id AS BIGINT), CAST(:seq AS BIGINT), CAST(:now_ms AS BIGINT)
        FROM head WHERE CAST(:seq AS BIGINT) <= head.inbox_head
        ON CONFLICT (device_id) DO UPDATE SET
            acked_seq = GREATEST(device_cursors.acked_seq, excluded.acked_seq),
            updated_at_ms = excluded.updated_at_ms
        RETURNING acked_seq
    ), dropped AS (
        DELETE FROM push_jobs
        WHERE device_id = :device_id AND seq <= :seq AND EXISTS (SELECT 1 FROM moved)
    )
    SELECT head.inbox_head AS head, moved.acked_seq AS cursor FROM head LEFT JOIN moved ON true
    """
)


async def ack(conn: AsyncConnection, user_id: int, device_id: int, seq: int, now_ms: int) -> int:
    """Move the device's cursor forward to `seq` (never back); returns the cursor after the ack.
    The device has everything its pending push would have announced: the wake-up is dropped."""
    if dialects.is_postgres(conn):
        row = (
            await conn.execute(
                _ACK_POSTGRES, {"user_id": user_id, "device_id": device_id, "seq": seq, "now_ms": now_ms}
            )
        ).one()
        if row.cursor is None:
            raise Unprocessable(f"cannot acknowledge seq {seq}: the inbox head is {row.head}", head=row.head)
        return int(row.cursor)
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
    cursor: int = (await conn.execute(stmt.returning(device_cursors.c.acked_seq))).scalar_one()
    await conn.execute(delete(push_jobs).where(push_jobs.c.device_id == device_id, push_jobs.c.seq <= seq))
    return cursor
