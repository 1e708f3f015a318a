"""After commit: one NEW frame per recipient device on the bus, and the push outbox beside it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from pingpull import wire
from pingpull.bus import MemoryBus, Publication
from pingpull.bus.heads import database_head_loader
from pingpull.db.schema import push_jobs
from tests.support.live import LiveContent


async def _jobs(live: LiveContent) -> dict[int, Any]:
    async def read(conn: AsyncConnection) -> dict[int, Any]:
        return {r.device_id: r for r in await conn.execute(select(push_jobs))}

    return await live.kernel.database.read(read)


async def test_every_recipient_device_gets_a_new_frame_except_the_sender(live: LiveContent) -> None:
    alice, a = await live.account("alice")
    alice_laptop = await alice.link_device("laptop")
    bob, b = await live.account("bob")
    bob_tablet = await bob.link_device("tablet")
    conversation = await alice.create_conversation([b["user_id"]])
    received: dict[int, list[bytes]] = {}
    for device_id in (a["device_id"], alice_laptop["device_id"], b["device_id"], bob_tablet["device_id"]):
        live.kernel.bus.subscribe(
            device_id, lambda frame, d=device_id: received.setdefault(d, []).append(frame)
        )

    first = await alice.send(conversation["id"], "one")
    second = await alice.send(conversation["id"], "two")

    assert a["device_id"] not in received  # the sending device already has its message
    for device_id in (alice_laptop["device_id"], b["device_id"], bob_tablet["device_id"]):
        frames = [wire.decode(f) for f in received[device_id]]
        assert [(f.kind, f.head, f.ref) for f in frames] == [
            (wire.Kind.NEW, 1, first["id"]),
            (wire.Kind.NEW, 2, second["id"]),
        ]
    assert await live.kernel.bus.head(b["user_id"]) == 2


async def test_push_jobs_coalesce_and_become_due_when_nobody_holds_the_device(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    bob, b = await live.account("bob")
    await bob.register_push(b["device_id"], "apns", "a" * 64)
    conversation = await alice.create_conversation([b["user_id"]])

    before_ms = live.context.clock_ms()
    for i in range(3):
        await alice.send(conversation["id"], f"m{i}")
    jobs = await _jobs(live)
    assert list(jobs) == [b["device_id"]]  # one job for many messages; none for the sender
    job = jobs[b["device_id"]]
    assert job.seq == 3
    # Bob's phone holds no gateway connection: his wake-up is due now, not after the ack grace.
    assert job.not_before_ms <= live.context.clock_ms()
    assert job.not_before_ms >= before_ms

    await bob.ack(2)
    assert b["device_id"] in await _jobs(live)  # seq 3 still unread
    await bob.ack(3)
    assert await _jobs(live) == {}


async def test_a_connected_device_gets_the_ack_grace_before_a_push(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    bob, b = await live.account("bob")
    await bob.register_push(b["device_id"], "fcm", "f" * 40)
    live.kernel.bus.subscribe(b["device_id"], lambda frame: None)
    conversation = await alice.create_conversation([b["user_id"]])
    sent_at = live.context.clock_ms()
    await alice.send(conversation["id"], "hi")
    job = (await _jobs(live))[b["device_id"]]
    grace_ms = int(live.context.settings.ack_grace_s * 1000)
    assert job.not_before_ms >= sent_at + grace_ms


async def test_moving_a_push_token_removes_it_from_the_old_device(live: LiveContent) -> None:
    phone, p = await live.account("phone")
    linked = await phone.link_device("new-install")
    new_install = live.client(linked["token"])
    await phone.register_push(p["device_id"], "fcm", "t" * 40)
    await new_install.register_push(linked["device_id"], "fcm", "t" * 40)

    from pingpull.db.schema import devices

    async def tokens(conn: AsyncConnection) -> dict[int, str | None]:
        return {r.id: r.push_token for r in await conn.execute(select(devices.c.id, devices.c.push_token))}

    assert await live.kernel.database.read(tokens) == {p["device_id"]: None, linked["device_id"]: "t" * 40}


async def test_a_fresh_bus_reads_heads_it_lacks_from_the_database(live: LiveContent) -> None:
    """What a restart looks like to the gateway: an empty in-memory bus beside a database with heads."""
    alice, a = await live.account("alice")
    _, b = await live.account("bob")
    _, c = await live.account("carol")
    conversation = await alice.create_conversation([b["user_id"]])
    for body in ("one", "two", "three"):
        await alice.send(conversation["id"], body)
    loader = database_head_loader(live.kernel.database)
    fresh = MemoryBus(head_loader=loader)
    missing_user = 10**12
    assert await fresh.heads([b["user_id"], c["user_id"], missing_user]) == {
        b["user_id"]: 3,
        c["user_id"]: 0,
        missing_user: None,
    }

    # A publish landing while the read is in flight wins over what the read returns: forward only.
    async def racing(user_ids: Sequence[int]) -> Mapping[int, int]:
        read = await loader(user_ids)
        await racy.publish([Publication(a["user_id"], 9, wire.encode_new(9, 1), ())])
        return read

    racy = MemoryBus(head_loader=racing)
    assert await racy.head(a["user_id"]) == 9
    assert await fresh.head(a["user_id"]) == 3
    # Many users at once, more than one query's worth.
    assert len(await loader([b["user_id"], *range(10**12, 10**12 + 1200)])) == 1
    assert MemoryBus().frames_delivered == 0 and await MemoryBus().head(b["user_id"]) is None
