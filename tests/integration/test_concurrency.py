"""The send transaction under concurrency: no duplicate, no gap, no deadlock, on both backends."""

from __future__ import annotations

from typing import Any

import trio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pingpull.db.schema import inbox, messages, users
from tests.support.live import LiveContent

SENDERS = 50
MESSAGES_PER_SENDER = 4


async def _inbox_seqs(live: LiveContent) -> dict[int, list[int]]:
    async def read(conn: AsyncConnection) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for row in await conn.execute(
            select(inbox.c.user_id, inbox.c.seq).order_by(inbox.c.user_id, inbox.c.seq)
        ):
            out.setdefault(row.user_id, []).append(row.seq)
        return out

    return await live.kernel.database.read(read)


async def _heads(live: LiveContent) -> dict[int, int]:
    async def read(conn: AsyncConnection) -> dict[int, int]:
        return {r.id: r.inbox_head for r in await conn.execute(select(users.c.id, users.c.inbox_head))}

    return await live.kernel.database.read(read)


async def test_racing_identical_sends_create_one_message(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    bob, b = await live.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    results: list[dict[str, Any]] = []

    async def send() -> None:
        results.append(await alice.send(conversation["id"], "exactly once", idempotency_key="the-key"))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(send)

    assert len({r["id"] for r in results}) == 1
    assert all(r == results[0] for r in results)

    async def count(conn: AsyncConnection) -> int:
        return (await conn.execute(select(func.count()).select_from(messages))).scalar_one()

    assert await live.kernel.database.read(count) == 1
    head, items = await bob.pull_all(0)
    assert head == 1 and len(items) == 1


async def test_many_senders_to_one_recipient_keep_seqs_gap_free(live: LiveContent) -> None:
    recipient, r = await live.account("recipient")
    senders = [await live.account(f"sender{i}") for i in range(SENDERS)]
    conversations = [await client.create_conversation([r["user_id"]]) for client, _ in senders]
    sent: list[int] = []

    async def burst(client: Any, conversation_id: int) -> None:
        for n in range(MESSAGES_PER_SENDER):
            sent.append((await client.send(conversation_id, f"m{n}"))["id"])

    async with trio.open_nursery() as nursery:
        for (client, _), conversation in zip(senders, conversations, strict=True):
            nursery.start_soon(burst, client, conversation["id"])

    total = SENDERS * MESSAGES_PER_SENDER
    assert len(set(sent)) == total
    head, items = await recipient.pull_all(0, limit=37)
    assert head == total
    assert [it["seq"] for it in items] == list(range(1, total + 1))
    assert sorted(it["message"]["id"] for it in items) == sorted(sent)
    # Every sender's own inbox (their copy of what they sent) is gap-free too.
    seqs = await _inbox_seqs(live)
    for _, account in senders:
        assert seqs[account["user_id"]] == list(range(1, MESSAGES_PER_SENDER + 1))


async def test_overlapping_groups_under_concurrent_senders_do_not_deadlock(live: LiveContent) -> None:
    people = [await live.account(f"person{i}") for i in range(8)]
    ids = [a["user_id"] for _, a in people]
    # Overlapping member sets, created by different people, so lock sets interleave in every order.
    groups = []
    for g in range(6):
        owner, _ = people[g]
        members = [ids[(g + k) % len(ids)] for k in range(1, 5)]
        groups.append(((await owner.create_conversation(members, title=f"g{g}"))["id"], g))
    per_group = 10

    async def chatter(conversation_id: int, owner_index: int) -> None:
        client, _ = people[owner_index]
        for n in range(per_group):
            await client.send(conversation_id, f"{conversation_id}:{n}")

    async with trio.open_nursery() as nursery:
        for conversation_id, owner_index in groups:
            nursery.start_soon(chatter, conversation_id, owner_index)

    seqs = await _inbox_seqs(live)
    heads = await _heads(live)
    for uid in ids:
        assert seqs.get(uid, []) == list(range(1, heads[uid] + 1))
    assert sum(heads.values()) == len(groups) * per_group * 5  # 5 members per group
