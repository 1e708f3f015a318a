"""Accounts, devices and conversations: units of database work run on the asyncio side.

Every public function takes an open AsyncConnection inside a transaction (see pingpull.db.engine)
and either returns plain values or raises a ContentError. Authorization lives here, next to the
query that would leak: a conversation is looked up *through* its membership row, so a non-member
gets exactly the same NotFound as for an id that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from content_svc.errors import Conflict, Forbidden, HandleTaken, NotFound, TooManyDevices, Unprocessable
from pingpull.db import dialects
from pingpull.db.schema import conversations, devices, members, messages, users


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    kind: str
    title: str | None
    created_by: int
    created_at_ms: int
    members: tuple[tuple[int, str], ...]  # (user id, role), ordered by user id

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "created_by": self.created_by,
            "created_at_ms": self.created_at_ms,
            "members": [{"user_id": uid, "role": role} for uid, role in self.members],
        }


# --- accounts and devices ----------------------------------------------------------------------


async def create_account(
    conn: AsyncConnection, handle: str, device_name: str, now_ms: int
) -> tuple[int, int]:
    stmt = (
        dialects.insert(conn, users)
        .values(handle=handle, inbox_head=0, created_at_ms=now_ms)
        .on_conflict_do_nothing(index_elements=["handle"])
        .returning(users.c.id)
    )
    user_id = (await conn.execute(stmt)).scalar_one_or_none()
    if user_id is None:
        raise HandleTaken(f"the handle {handle!r} is taken")
    device_id = await _insert_device(conn, user_id, device_name, now_ms)
    return user_id, device_id


async def add_device(
    conn: AsyncConnection, user_id: int, device_name: str, max_devices: int, now_ms: int
) -> int:
    # Lock the user row so two concurrent links cannot both pass the limit.
    await conn.execute(select(users.c.id).where(users.c.id == user_id).with_for_update(key_share=True))
    count = (await conn.execute(select(func.count()).where(devices.c.user_id == user_id))).scalar_one()
    if count >= max_devices:
        raise TooManyDevices(f"an account may link at most {max_devices} devices")
    return await _insert_device(conn, user_id, device_name, now_ms)


async def _insert_device(conn: AsyncConnection, user_id: int, name: str, now_ms: int) -> int:
    stmt = insert(devices).values(user_id=user_id, name=name, created_at_ms=now_ms).returning(devices.c.id)
    device_id: int = (await conn.execute(stmt)).scalar_one()
    return device_id


async def device_belongs_to(conn: AsyncConnection, user_id: int, device_id: int) -> bool:
    row = await conn.execute(
        select(devices.c.id).where(devices.c.id == device_id, devices.c.user_id == user_id)
    )
    return row.first() is not None


async def set_push_token(
    conn: AsyncConnection,
    user_id: int,
    device_id: int,
    provider: str,
    token: str,
    environment: str,
    now_ms: int,
) -> None:
    # A push token identifies an app install; if it moved (reinstall, restored backup), the old device
    # row must not keep it, or one phone would be woken twice.
    await conn.execute(
        update(devices)
        .where(devices.c.push_provider == provider, devices.c.push_token == token, devices.c.id != device_id)
        .values(push_provider=None, push_token=None, push_environment=None, push_registered_at_ms=None)
    )
    result = await conn.execute(
        update(devices)
        .where(devices.c.id == device_id, devices.c.user_id == user_id)
        .values(
            push_provider=provider,
            push_token=token,
            push_environment=environment,
            push_registered_at_ms=now_ms,
        )
    )
    if result.rowcount != 1:
        raise NotFound("no such device")


async def clear_push_token(conn: AsyncConnection, user_id: int, device_id: int) -> None:
    result = await conn.execute(
        update(devices)
        .where(devices.c.id == device_id, devices.c.user_id == user_id)
        .values(push_provider=None, push_token=None, push_environment=None, push_registered_at_ms=None)
    )
    if result.rowcount != 1:
        raise NotFound("no such device")


# --- conversations -----------------------------------------------------------------------------


async def create_conversation(
    conn: AsyncConnection,
    creator_id: int,
    member_ids: list[int],
    title: str | None,
    max_members: int,
    now_ms: int,
) -> tuple[Conversation, bool]:
    """Returns the conversation and whether it was created (False: the existing direct one)."""
    everyone = sorted(set(member_ids) | {creator_id})
    if len(everyone) < 2:
        raise Unprocessable("a conversation needs at least one member besides you")
    if len(everyone) > max_members:
        raise Unprocessable(f"a conversation may have at most {max_members} members")
    found = (await conn.execute(select(users.c.id).where(users.c.id.in_(everyone)))).scalars().all()
    missing = sorted(set(everyone) - set(found))
    if missing:
        raise Unprocessable("some members are not users", unknown_user_ids=missing)

    is_direct = len(everyone) == 2 and title is None
    direct_key = f"{everyone[0]}:{everyone[1]}" if is_direct else None
    stmt = dialects.insert(conn, conversations).values(
        kind="direct" if is_direct else "group",
        title=title,
        created_by=creator_id,
        direct_key=direct_key,
        created_at_ms=now_ms,
    )
    if direct_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["direct_key"])
    conversation_id = (await conn.execute(stmt.returning(conversations.c.id))).scalar_one_or_none()
    if conversation_id is None:
        existing = (
            await conn.execute(select(conversations.c.id).where(conversations.c.direct_key == direct_key))
        ).scalar_one()
        return await get_conversation(conn, creator_id, existing), False

    await conn.execute(
        insert(members),
        [
            {
                "conversation_id": conversation_id,
                "user_id": uid,
                "role": "admin" if (uid == creator_id and not is_direct) else "member",
                "visible_after_message_id": 0,
                "joined_at_ms": now_ms,
            }
            for uid in everyone
        ],
    )
    return await get_conversation(conn, creator_id, conversation_id), True


async def member_role(conn: AsyncConnection, user_id: int, conversation_id: int) -> str | None:
    row = await conn.execute(
        select(members.c.role).where(
            members.c.conversation_id == conversation_id, members.c.user_id == user_id
        )
    )
    return row.scalar_one_or_none()


async def get_conversation(conn: AsyncConnection, user_id: int, conversation_id: int) -> Conversation:
    if await member_role(conn, user_id, conversation_id) is None:
        raise NotFound("no such conversation")
    row = (await conn.execute(select(conversations).where(conversations.c.id == conversation_id))).one()
    roster = await conn.execute(
        select(members.c.user_id, members.c.role)
        .where(members.c.conversation_id == conversation_id)
        .order_by(members.c.user_id)
    )
    return Conversation(
        id=row.id,
        kind=row.kind,
        title=row.title,
        created_by=row.created_by,
        created_at_ms=row.created_at_ms,
        members=tuple((r.user_id, r.role) for r in roster),
    )


async def list_conversations(
    conn: AsyncConnection, user_id: int, after: int, limit: int
) -> list[Conversation]:
    ids = (
        await conn.execute(
            select(members.c.conversation_id)
            .where(members.c.user_id == user_id, members.c.conversation_id > after)
            .order_by(members.c.conversation_id)
            .limit(limit)
        )
    ).scalars()
    return [await get_conversation(conn, user_id, cid) for cid in ids.all()]


async def add_member(
    conn: AsyncConnection, actor_id: int, conversation_id: int, user_id: int, max_members: int, now_ms: int
) -> bool:
    """Returns True when the user was added, False when already a member."""
    conversation = await _group_for_admin(conn, actor_id, conversation_id)
    if any(uid == user_id for uid, _ in conversation.members):
        return False
    if len(conversation.members) >= max_members:
        raise Unprocessable(f"a conversation may have at most {max_members} members")
    if (await conn.execute(select(users.c.id).where(users.c.id == user_id))).first() is None:
        raise Unprocessable("that user does not exist", unknown_user_ids=[user_id])
    last_message_id = (
        await conn.execute(
            select(func.coalesce(func.max(messages.c.id), 0)).where(
                messages.c.conversation_id == conversation_id
            )
        )
    ).scalar_one()
    await conn.execute(
        insert(members).values(
            conversation_id=conversation_id,
            user_id=user_id,
            role="member",
            visible_after_message_id=last_message_id,
            joined_at_ms=now_ms,
        )
    )
    return True


async def remove_member(conn: AsyncConnection, actor_id: int, conversation_id: int, user_id: int) -> None:
    """An admin removes anyone; any member may remove themselves (leave)."""
    role = await member_role(conn, actor_id, conversation_id)
    if role is None:
        raise NotFound("no such conversation")
    kind = (
        await conn.execute(select(conversations.c.kind).where(conversations.c.id == conversation_id))
    ).scalar_one()
    if kind == "direct":
        raise Conflict("members of a direct conversation cannot change")
    if actor_id != user_id and role != "admin":
        raise Forbidden("only an admin may remove other members")
    removed = await conn.execute(
        delete(members).where(members.c.conversation_id == conversation_id, members.c.user_id == user_id)
    )
    if removed.rowcount == 0:
        raise NotFound("that user is not a member")
    await _keep_an_admin(conn, conversation_id)


async def _keep_an_admin(conn: AsyncConnection, conversation_id: int) -> None:
    # A group whose last admin left would be frozen; hand the role to the longest-standing member.
    admins = select(func.count()).where(
        members.c.conversation_id == conversation_id, members.c.role == "admin"
    )
    if (await conn.execute(admins)).scalar_one() > 0:
        return
    successor = (
        await conn.execute(
            select(members.c.user_id)
            .where(members.c.conversation_id == conversation_id)
            .order_by(members.c.joined_at_ms, members.c.user_id)
            .limit(1)
        )
    ).scalar_one_or_none()
    if successor is not None:
        await conn.execute(
            update(members)
            .where(and_(members.c.conversation_id == conversation_id, members.c.user_id == successor))
            .values(role="admin")
        )


async def _group_for_admin(conn: AsyncConnection, actor_id: int, conversation_id: int) -> Conversation:
    conversation = await get_conversation(conn, actor_id, conversation_id)
    if conversation.kind == "direct":
        raise Conflict("members of a direct conversation cannot change")
    if dict(conversation.members).get(actor_id) != "admin":
        raise Forbidden("only an admin may add members")
    return conversation
