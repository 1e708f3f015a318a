"""RespSubscriber against a real Redis: delivery, binary safety, batching, reconnect, backoff, churn.

Skips when Redis is unreachable, fails instead under PINGPULL_REQUIRE_SERVICES=1. Every test uses its
own channel prefix. Publishing and inspection go through a blocking `redis.Redis` in a worker thread.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import trio

from pingpull.bus import BusError
from pingpull.bus import resp as resp_module
from pingpull.bus.resp import RespSubscriber, encode_command
from tests.support.services import REDIS_URL, unavailable

pytestmark = pytest.mark.redis

T = TypeVar("T")
WAIT_S = 10.0


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
    try:
        connection.ping()
    except redis.RedisError as exc:
        connection.close()
        unavailable("Redis", exc)
    yield connection
    connection.close()


@pytest.fixture
def prefix() -> bytes:
    return f"pp:test:{uuid.uuid4().hex[:12]}:".encode()


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    with trio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls plain state and an external server
            await trio.sleep(0.005)
        return
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


async def numsub(client: redis.Redis, channel: bytes) -> int:
    reply = await call(client.pubsub_numsub, channel)
    return int(reply[0][1])


async def wait_numsub(client: redis.Redis, channel: bytes, expected: int) -> None:
    with trio.move_on_after(WAIT_S):
        while await numsub(client, channel) != expected:  # noqa: ASYNC110 - polls the server
            await trio.sleep(0.01)
        return
    pytest.fail(f"PUBSUB NUMSUB {channel!r} never became {expected}")


def publish_many(client: redis.Redis, items: list[tuple[bytes, bytes]]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for channel, data in items:
        pipe.publish(channel, data)
    return [int(n) for n in pipe.execute()]


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.connects: list[bool] = []

    def on_message(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))

    def on_connected(self, first_time: bool) -> None:
        self.connects.append(first_time)

    def on(self, channel: bytes) -> list[bytes]:
        return [data for ch, data in self.messages if ch == channel]


def make(recorder: Recorder, url: str = REDIS_URL, **kwargs: Any) -> RespSubscriber:
    return RespSubscriber(url, recorder.on_message, on_connected=recorder.on_connected, **kwargs)


def url_with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = (parts.hostname or "127.0.0.1") if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
    netloc[-1] = f"{host}:{port}"
    return urlunsplit(parts._replace(netloc="@".join(netloc)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -------------------------------------------------------------------------------------------------


async def test_messages_arrive_in_order_only_for_subscribed_channels(
    client: redis.Redis, prefix: bytes
) -> None:
    a, b, never = prefix + b"a", prefix + b"b", prefix + b"never"
    recorder = Recorder()
    subscriber = make(recorder)
    subscriber.subscribe(a)
    subscriber.subscribe(b)
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        assert subscriber.connected
        assert recorder.connects == [True]
        assert subscriber.server_channel_count == 2

        items = [(ch, b"%d" % i) for i in range(300) for ch in (a, b, never)]
        receivers = await call(publish_many, client, items)
        assert receivers == [1, 1, 0] * 300
        await wait_until(lambda: len(recorder.messages) == 600, "600 messages")
        # One connection: the global publish order is kept, not only the order per channel.
        assert recorder.messages == [(ch, data) for ch, data in items if ch != never]

        # From the moment unsubscribe() returns, nothing more for b, even before Redis processed it.
        subscriber.unsubscribe(b)
        assert subscriber.channel_count == 1
        await call(publish_many, client, [(b, b"late"), (a, b"after")])
        await wait_numsub(client, b, 0)
        await call(publish_many, client, [(b, b"gone"), (a, b"end")])
        await wait_until(lambda: recorder.on(a)[-1:] == [b"end"], "the last message on a")
        assert recorder.on(b) == [b"%d" % i for i in range(300)]
        assert recorder.on(a)[-2:] == [b"after", b"end"]
        assert recorder.on(never) == []
        assert await numsub(client, a) == 1
        nursery.cancel_scope.cancel()
    assert not subscriber.connected


async def test_binary_channels_and_payloads_survive(client: redis.Redis, prefix: bytes) -> None:
    channel = prefix + b"\r\n\x00\xff$3\r\n"
    payloads = [
        b"",
        b"\r\n",
        b"\x00",
        b"\r\n\x00\r\n\x00",
        b"*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$1\r\ny\r\n",  # looks like RESP, must stay data
        bytes(range(256)),
        b"\x01\x01\x00\x00" + (2**64 - 1).to_bytes(8, "big") + b"\x00" * 8,  # a 20-byte frame
        os.urandom(1 << 20),  # spans many receive buffers
    ]
    recorder = Recorder()
    subscriber = make(recorder)
    subscriber.subscribe(channel)
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        await call(publish_many, client, [(channel, p) for p in payloads])
        await wait_until(lambda: len(recorder.messages) == len(payloads), "every payload")
        assert recorder.messages == [(channel, p) for p in payloads]
        nursery.cancel_scope.cancel()


async def test_five_thousand_channels_subscribe_in_batches(
    client: redis.Redis, prefix: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    channels = [prefix + b"%d" % i for i in range(5000)]
    writes: list[bytes] = []
    real_send_all = resp_module._send_all

    async def recording_send_all(sock: trio.socket.SocketType, data: bytes) -> None:
        writes.append(data)
        await real_send_all(sock, data)

    monkeypatch.setattr(resp_module, "_send_all", recording_send_all)
    recorder = Recorder()
    confirmed_at_connect: list[int] = []
    subscriber = RespSubscriber(
        REDIS_URL,
        recorder.on_message,
        on_connected=lambda first: confirmed_at_connect.append(subscriber.server_channel_count),
    )
    for channel in channels[:2500]:  # before run: the (re)subscription path
        subscriber.subscribe(channel)
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        # started (and on_connected) only once Redis confirmed all of them
        assert confirmed_at_connect == [2500]
        for channel in channels[2500:]:  # while connected: the coalesced writer path
            subscriber.subscribe(channel)
        assert subscriber.channel_count == 5000
        await wait_until(lambda: subscriber.server_channel_count == 5000, "5000 confirmations")

        subscribe_writes = [w for w in writes if b"SUBSCRIBE" in w[:40]]
        per_write = [int(w[1 : w.index(b"\r\n")]) - 1 for w in subscribe_writes]
        assert sum(per_write) == 5000
        assert max(per_write) <= 1000
        assert len(subscribe_writes) == 6  # 1000+1000+500 at connect, 1000+1000+500 in one flush

        receivers = await call(publish_many, client, [(ch, ch[-4:]) for ch in channels])
        assert receivers == [1] * 5000
        await wait_until(lambda: len(recorder.messages) == 5000, "a message on every channel")
        assert recorder.messages == [(ch, ch[-4:]) for ch in channels]
        nursery.cancel_scope.cancel()


async def test_reconnects_and_resubscribes_after_a_server_side_kill(
    client: redis.Redis, prefix: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pingpull.bus")
    keep, drop, added = prefix + b"keep", prefix + b"drop", prefix + b"added"
    recorder = Recorder()
    name = f"pp-test-{uuid.uuid4().hex[:8]}"
    subscriber = make(recorder, backoff_initial_s=0.05, backoff_max_s=0.2, client_name=name)
    subscriber.subscribe(keep)
    subscriber.subscribe(drop)
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        await call(publish_many, client, [(keep, b"before")])
        await wait_until(lambda: recorder.on(keep) == [b"before"], "the first message")
        listed = await call(client.client_list, _type="pubsub")
        assert [c["name"] for c in listed].count(name) == 1

        killed = await call(client.execute_command, "CLIENT", "KILL", "TYPE", "pubsub")
        assert int(killed) >= 1
        # Changed while the connection is down (or just about to be noticed as down).
        subscriber.subscribe(added)
        subscriber.unsubscribe(drop)

        await wait_until(lambda: recorder.connects == [True, False], "on_connected(False)")
        assert subscriber.connected
        assert subscriber.server_channel_count == 2  # keep + added, confirmed before on_connected
        assert await numsub(client, keep) == 1
        assert await numsub(client, added) == 1
        assert await numsub(client, drop) == 0

        receivers = await call(publish_many, client, [(keep, b"after"), (added, b"new"), (drop, b"x")])
        assert receivers == [1, 1, 0]
        await wait_until(lambda: recorder.on(added) == [b"new"], "delivery after the reconnect")
        assert recorder.on(keep) == [b"before", b"after"]
        assert recorder.on(drop) == []
        nursery.cancel_scope.cancel()
    assert any("lost" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


async def test_wrong_port_retries_with_backoff_and_never_raises(
    prefix: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pingpull.bus")
    recorder = Recorder()
    subscriber = make(
        recorder, url_with_port(REDIS_URL, free_port()), backoff_initial_s=0.01, backoff_max_s=0.05
    )
    subscriber.subscribe(prefix + b"x")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber.run)
        await trio.sleep(0.6)
        assert not subscriber.connected
        nursery.cancel_scope.cancel()
    attempts = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(attempts) >= 5
    assert all(r.name == "pingpull.bus" for r in attempts)
    assert recorder.connects == []
    assert subscriber.channel_count == 1


async def test_subscribe_unsubscribe_churn_ends_in_the_last_state(client: redis.Redis, prefix: bytes) -> None:
    same_tick, across_ticks, ends_off, sentinel = (prefix + s for s in (b"same", b"across", b"off", b"s"))
    recorder = Recorder()
    subscriber = make(recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        # In one tick: collapses into a single SUBSCRIBE.
        subscriber.subscribe(same_tick)
        subscriber.unsubscribe(same_tick)
        subscriber.subscribe(same_tick)
        # Across ticks: every step may reach Redis; the order on the wire keeps the last one.
        for _ in range(20):
            subscriber.subscribe(across_ticks)
            subscriber.subscribe(ends_off)
            await trio.lowlevel.checkpoint()  # lets the writer flush this step
            subscriber.unsubscribe(across_ticks)
            subscriber.unsubscribe(ends_off)
            await trio.lowlevel.checkpoint()  # lets the writer flush this step
        subscriber.subscribe(across_ticks)
        subscriber.subscribe(sentinel)  # confirmed after everything before it
        await wait_numsub(client, sentinel, 1)
        assert await numsub(client, same_tick) == 1
        assert await numsub(client, across_ticks) == 1
        assert await numsub(client, ends_off) == 0
        assert subscriber.channel_count == 3

        receivers = await call(
            publish_many,
            client,
            [(same_tick, b"1"), (across_ticks, b"2"), (ends_off, b"3"), (sentinel, b"4")],
        )
        assert receivers == [1, 1, 0, 1]
        await wait_until(lambda: len(recorder.messages) == 3, "three messages")
        assert recorder.messages == [(same_tick, b"1"), (across_ticks, b"2"), (sentinel, b"4")]
        nursery.cancel_scope.cancel()


async def test_a_raising_callback_is_logged_and_delivery_goes_on(
    client: redis.Redis, prefix: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    channel = prefix + b"c"
    seen: list[bytes] = []

    def on_message(_channel: bytes, data: bytes) -> None:
        seen.append(data)
        if data == b"boom":
            raise RuntimeError("callback bug")

    subscriber = RespSubscriber(REDIS_URL, on_message)
    subscriber.subscribe(channel)
    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber.run)
        await call(publish_many, client, [(channel, b"boom"), (channel, b"fine")])
        await wait_until(lambda: seen == [b"boom", b"fine"], "both messages")
        assert subscriber.connected
        nursery.cancel_scope.cancel()
    assert any("on_message callback raised" in r.getMessage() for r in caplog.records)


async def test_auth_with_an_acl_user_and_a_refused_password(
    client: redis.Redis, prefix: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = f"pp_test_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    try:
        await call(
            client.acl_setuser,
            user,
            enabled=True,
            passwords=[f"+{password}"],
            channels=["*"],
            commands=["+subscribe", "+unsubscribe", "+ping", "+auth"],
        )
    except redis.RedisError as exc:
        pytest.skip(f"cannot create an ACL user on this Redis: {exc}")
    try:
        parts = urlsplit(REDIS_URL)
        hostport = parts.netloc.rsplit("@", 1)[-1]
        good = urlunsplit(parts._replace(netloc=f"{user}:{password}@{hostport}"))
        bad = urlunsplit(parts._replace(netloc=f"{user}:wrong@{hostport}"))
        channel = prefix + b"auth"

        recorder = Recorder()
        subscriber = make(recorder, good)
        subscriber.subscribe(channel)
        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber.run)
            await call(publish_many, client, [(channel, b"authed")])
            await wait_until(lambda: recorder.on(channel) == [b"authed"], "delivery as the ACL user")
            nursery.cancel_scope.cancel()

        caplog.set_level(logging.WARNING, logger="pingpull.bus")
        refused = Recorder()
        subscriber = make(refused, bad, backoff_initial_s=0.01, backoff_max_s=0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber.run)
            await trio.sleep(0.3)
            assert not subscriber.connected
            nursery.cancel_scope.cancel()
        assert refused.connects == []
        messages = [r.getMessage() for r in caplog.records]
        assert any("refused AUTH" in m for m in messages)
        assert not any(password in m for m in messages)
    finally:
        await call(client.acl_deluser, user)


# ------------------------------------------------------------------------------------------------
# no server needed


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:6379/0",
        "unix:///tmp/redis.sock",
        "redis://127.0.0.1:6379/zero",
        "redis://127.0.0.1:notaport/0",
        "redis://user@127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0?timeout=1",
    ],
)
def test_bad_urls_are_rejected_up_front(url: str) -> None:
    with pytest.raises(BusError):
        RespSubscriber(url, lambda channel, data: None)


def test_subscribe_takes_bytes_only() -> None:
    subscriber = RespSubscriber("redis://127.0.0.1:6379/0", lambda channel, data: None)
    with pytest.raises(TypeError):
        subscriber.subscribe("pp:d:1")  # type: ignore[arg-type]
    subscriber.subscribe(b"pp:d:1")
    subscriber.subscribe(b"pp:d:1")
    subscriber.unsubscribe(b"pp:d:2")
    assert subscriber.channel_count == 1


def test_encode_command_is_length_prefixed() -> None:
    assert (
        encode_command(b"SUBSCRIBE", b"a\r\nb", b"") == b"*3\r\n$9\r\nSUBSCRIBE\r\n$4\r\na\r\nb\r\n$0\r\n\r\n"
    )


async def test_a_silent_server_is_detected_by_the_ping_probe(caplog: pytest.LogCaptureFixture) -> None:
    """A fake server that completes the handshake, then never answers: PING, no PONG, reconnect."""
    caplog.set_level(logging.WARNING, logger="pingpull.bus")
    received: list[bytes] = []

    async def mute_redis(stream: trio.SocketStream) -> None:
        handshake = await stream.receive_some()
        received.append(bytes(handshake))
        await stream.send_all(b"+PONG\r\n")
        async for data in stream:  # swallow everything, answer nothing
            received.append(bytes(data))

    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, mute_redis, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        subscriber = make(
            recorder,
            f"redis://127.0.0.1:{port}/0",
            health_check_interval_s=0.1,
            backoff_initial_s=0.01,
            backoff_max_s=0.01,
        )
        await nursery.start(subscriber.run)  # no channels: started right after the handshake
        await wait_until(lambda: recorder.connects == [True, False], "a reconnect", timeout_s=3)
        nursery.cancel_scope.cancel()
    assert received[0] == b"*1\r\n$4\r\nPING\r\n"
    assert b"*1\r\n$4\r\nPING\r\n" in received[1:]
    assert any("no reply to PING" in r.getMessage() for r in caplog.records)


async def test_run_again_after_cancellation_resubscribes(client: redis.Redis, prefix: bytes) -> None:
    channel = prefix + b"again"
    recorder = Recorder()
    subscriber = make(recorder)
    subscriber.subscribe(channel)
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber.run)  # started is reported by every run
            await call(publish_many, client, [(channel, b"x")])
            await wait_until(lambda: len(recorder.messages) == len(recorder.connects), "one message per run")
            nursery.cancel_scope.cancel()
        await wait_numsub(client, channel, 0)
    assert recorder.connects == [True, False]
