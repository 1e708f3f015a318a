"""The Redis bus: receiver counts, monotonic heads, delivery through a gateway, recovery from a restart."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from pingpull import wire
from pingpull.bus import BusError, Publication
from pingpull.bus.redis import RedisBus, open_redis_bus
from pingpull.tokens import ensure_keys
from tests.support.live import LiveContent, live_content, settings_for_test
from tests.support.redis_server import RedisProcess
from tests.support.services import SqliteTemplate
from tests.support.waiting import wait_until


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def bus(redis_url: str, prefix: str) -> AsyncIterator[RedisBus]:
    async with open_redis_bus(redis_url, prefix=prefix) as opened, trio.open_nursery() as nursery:
        await nursery.start(opened.subscriber.run)
        yield opened
        nursery.cancel_scope.cancel()


async def test_publish_counts_receivers_and_heads_only_move_forward(bus: RedisBus) -> None:
    frame = wire.encode_new(5, 42)
    assert await bus.publish([Publication(user_id=1, head=5, frame=frame, device_ids=(10, 11))]) == {
        10: 0,
        11: 0,
    }
    assert await bus.head(1) == 5
    got: list[bytes] = []
    subscription = bus.subscribe(10, got.append)
    await wait_until(lambda: bus.subscriber.server_channel_count == 1)
    late = wire.encode_new(3, 41)  # a slower sender committing an older seq, published later
    assert await bus.publish([Publication(user_id=1, head=3, frame=late, device_ids=(10,))]) == {10: 1}
    assert await bus.head(1) == 5
    await wait_until(lambda: got == [late])
    subscription.cancel()
    await wait_until(lambda: bus.subscriber.server_channel_count == 0)
    assert await bus.publish([Publication(user_id=1, head=6, frame=frame, device_ids=(10,))]) == {10: 0}
    assert await bus.heads([1, 2]) == {1: 6, 2: None}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_stack(
    tmp_path: Path, sqlite_template: SqliteTemplate, private_redis: RedisProcess, prefix: str
) -> AsyncIterator[LiveContent]:
    ensure_keys(tmp_path / "keys")
    settings = settings_for_test(
        sqlite_template.fresh_copy(tmp_path), tmp_path, redis=(private_redis.url, prefix)
    )
    async with live_content(settings, with_gateway=True) as server:
        yield server


async def test_gateway_on_redis_survives_a_redis_restart_and_resyncs(
    redis_stack: LiveContent, private_redis: RedisProcess
) -> None:
    alice, _ = await redis_stack.account("alice")
    bob, b = await redis_stack.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    url = redis_stack.signal_url.replace("http://", "ws://") + f"/v1/signal?access_token={bob.token}"
    bus = redis_stack.kernel.bus
    assert isinstance(bus, RedisBus)
    async with open_websocket_url(url) as ws:
        assert wire.decode(await ws.get_message()).kind == wire.Kind.HELLO
        await wait_until(lambda: bus.subscriber.server_channel_count == 1)
        first = await alice.send(conversation["id"], "before the restart")
        with trio.fail_after(5):
            assert wire.decode(await ws.get_message()).ref == first["id"]

        private_redis.stop()  # Redis dies and comes back empty (no persistence)
        private_redis.start()
        with trio.fail_after(15):
            resync = wire.decode(await ws.get_message())
        # Redis lost the head; the bus reads it from the database (this process has one) and writes
        # it back, so the device learns its real head instead of "unknown" and pulls only if behind.
        assert (resync.kind, resync.head, resync.ref) == (wire.Kind.NEW, 1, 0)
        assert await bus.head(b["user_id"]) == 1
        await wait_until(lambda: bus.subscriber.server_channel_count == 1)
        second = await alice.send(conversation["id"], "after the restart")
        with trio.fail_after(5):
            new = wire.decode(await ws.get_message())
        assert (new.kind, new.head, new.ref) == (wire.Kind.NEW, 2, second["id"])
    head, items = await bob.pull_all(0)
    assert head == 2 and [i["message"]["body"] for i in items] == ["before the restart", "after the restart"]


async def test_send_succeeds_while_redis_is_down(
    redis_stack: LiveContent, private_redis: RedisProcess
) -> None:
    alice, _ = await redis_stack.account("alice")
    bob, b = await redis_stack.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    private_redis.stop()
    sent = await alice.send(conversation["id"], "committed anyway")  # the bus is a hint; the DB is truth
    head, items = await bob.pull_all(0)
    assert head == 1 and items[0]["message"]["id"] == sent["id"]


async def test_heads_redis_lacks_come_from_the_loader_and_are_written_back_forward_only(
    redis_url: str, prefix: str
) -> None:
    asked: list[list[int]] = []
    database = {1: 7, 2: 3}  # user 3 does not exist

    async def loader(user_ids: Sequence[int]) -> Mapping[int, int]:
        asked.append(sorted(user_ids))
        return {u: database[u] for u in user_ids if u in database}

    async with open_redis_bus(redis_url, prefix=prefix, head_loader=loader) as bus:
        # Redis knows user 2 at 9 (newer than the database read will say): Redis wins.
        await bus.publish([Publication(user_id=2, head=9, frame=wire.encode_new(9, 1), device_ids=())])
        assert await bus.heads([1, 2, 3]) == {1: 7, 2: 9, 3: None}
        assert asked == [[1, 3]]
        assert await bus.head(1) == 7  # written back: Redis answers now
        assert asked == [[1, 3]]
        # A write-back never undoes a newer publish.
        await bus.publish([Publication(user_id=1, head=8, frame=wire.encode_new(8, 2), device_ids=())])
        database[1] = 6
        assert await bus.heads([1]) == {1: 8}
        assert await bus.head(3) is None
        assert asked == [[1, 3], [3]]


async def test_a_failing_loader_is_a_bus_error(redis_url: str, prefix: str) -> None:
    async def loader(user_ids: Sequence[int]) -> Mapping[int, int]:
        raise BusError("database down")

    async with open_redis_bus(redis_url, prefix=prefix, head_loader=loader) as bus:
        with pytest.raises(BusError):
            await bus.head(1)


async def test_messages_are_routed_by_the_device_in_the_channel_name(bus: RedisBus, prefix: str) -> None:
    got: list[bytes] = []
    bus.subscribe(12, got.append)
    for channel in (f"{prefix}:d:x", f"{prefix}:d:", "other:d:12", f"{prefix}:u:12"):
        bus._on_message(channel.encode(), b"nope")
    bus._on_message(f"{prefix}:d:12".encode(), b"yes")
    assert got == [b"yes"]
