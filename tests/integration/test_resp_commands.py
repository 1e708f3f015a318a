"""`RespCommands` against the real Redis and against a silent server on loopback: replies go to the
caller that asked, in order, on one connection, concurrent callers included; error replies fail their
own call only; scripts load themselves; a dropped connection fails what was in flight and the next
command reconnects; a server that does not answer times out; a cancelled caller's reply is dropped
without shifting the others'; commands larger than the socket buffer are not interleaved.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from pingpull.bus.base import BusError
from pingpull.bus.resp_commands import RespCommands, RespReplyError, Script


@pytest.fixture
def key() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def commands(redis_url: str) -> AsyncIterator[RespCommands]:
    client = RespCommands(redis_url, timeout_s=5, client_name="pingpull-test")
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


async def test_replies_in_order_on_one_connection_with_concurrent_callers(
    commands: RespCommands, key: str
) -> None:
    assert await commands.execute(b"SET", key, 41) == b"OK"
    assert await commands.execute(b"INCR", key) == 42
    assert await commands.execute(b"MGET", key, key + "-missing") == [b"42", None]
    got: dict[int, bytes] = {}

    async def echo(i: int) -> None:
        got[i] = await commands.execute(b"ECHO", f"value-{i}")

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(echo, i)
    assert got == {i: f"value-{i}".encode() for i in range(300)}
    ids = {await commands.execute(b"CLIENT", b"ID") for _ in range(3)}
    assert len(ids) == 1  # one connection for everything


async def test_an_error_reply_fails_only_its_call(commands: RespCommands, key: str) -> None:
    await commands.execute(b"SET", key, b"not a number")
    with pytest.raises(RespReplyError, match="INCR"):
        await commands.execute(b"INCR", key)
    with pytest.raises(RespReplyError):
        await commands.execute(b"NOSUCHCOMMAND")
    assert await commands.execute(b"GET", key) == b"not a number"


async def test_a_script_redis_does_not_know_is_loaded(commands: RespCommands, key: str) -> None:
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    await commands.execute(b"SCRIPT", b"FLUSH")
    assert await commands.execute(b"SCRIPT", b"EXISTS", script.sha1) == [0]
    assert await commands.evalsha(script, [key], [5]) == 5
    assert await commands.execute(b"SCRIPT", b"EXISTS", script.sha1) == [1]
    assert await commands.evalsha(script, [key], [2]) == 7
    with pytest.raises(RespReplyError):
        await commands.evalsha(Script("return redis.call('NOPE')"), [], [])


async def test_the_database_in_the_url_is_selected(redis_url: str, key: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    other = RespCommands(f"{base}/3")
    async with trio.open_nursery() as nursery:
        await nursery.start(other.run)
        await other.execute(b"SET", key, b"in three", b"EX", 60)
        default = RespCommands(f"{base}/0")
        await nursery.start(default.run)
        assert await default.execute(b"GET", key) is None
        assert await default.execute(b"SELECT", 3) == b"OK"  # on its own connection only
        assert await default.execute(b"GET", key) == b"in three"
        nursery.cancel_scope.cancel()


async def test_a_killed_connection_fails_what_was_in_flight_and_the_next_call_reconnects(
    commands: RespCommands, redis_url: str, key: str
) -> None:
    first_id = await commands.execute(b"CLIENT", b"ID")
    killer = RespCommands(redis_url)
    async with trio.open_nursery() as nursery:
        await nursery.start(killer.run)
        blocked: list[BaseException] = []
        failed = trio.Event()

        async def blocked_call() -> None:
            try:
                await commands.execute(b"BLPOP", key + "-never", 10)
            except BusError as exc:
                blocked.append(exc)
                failed.set()

        nursery.start_soon(blocked_call)
        await trio.sleep(0.2)
        assert await killer.execute(b"CLIENT", b"KILL", b"ID", first_id) == 1
        with trio.fail_after(5):
            await failed.wait()
        assert "broke" in str(blocked[0])
        second_id = await commands.execute(b"CLIENT", b"ID")
        assert second_id != first_id
        nursery.cancel_scope.cancel()


async def test_a_cancelled_callers_reply_is_dropped_and_the_next_gets_its_own(
    commands: RespCommands, key: str
) -> None:
    with trio.move_on_after(0.1):
        await commands.execute(b"BLPOP", key, 0.5)  # Redis answers nil after 0.5 s
    assert await commands.execute(b"ECHO", b"mine") == b"mine"


async def test_commands_larger_than_the_socket_buffer_are_not_interleaved(
    commands: RespCommands, key: str
) -> None:
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than a socket takes at once
    results: dict[str, object] = {}

    async def set_big() -> None:
        results["set"] = await commands.execute(b"SET", key, big, b"EX", 60)

    async def echo(i: int) -> None:
        results[f"echo{i}"] = await commands.execute(b"ECHO", f"e{i}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(set_big)
        for i in range(20):
            nursery.start_soon(echo, i)
    assert results == {"set": b"OK", **{f"echo{i}": f"e{i}".encode() for i in range(20)}}
    assert await commands.execute(b"STRLEN", key) == len(big)


async def test_a_server_that_never_answers_times_out_and_the_next_call_reconnects(
    redis_url: str,
) -> None:
    connections = 0

    async def handshake_then_silence(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        data = b""
        while b"PING" not in data:
            data += await stream.receive_some(4096)
        await stream.send_all(b"+PONG\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handshake_then_silence, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        client = RespCommands(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
        await nursery.start(client.run)
        for _ in range(2):
            with pytest.raises(BusError, match="no reply"):
                await client.execute(b"GET", b"k")
        assert connections == 2
        nursery.cancel_scope.cancel()


async def test_an_unreachable_redis_is_a_bus_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening
        client = RespCommands(f"redis://127.0.0.1:{port}/0", timeout_s=2)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with pytest.raises(BusError, match="cannot connect"):
                await client.execute(b"PING")
            nursery.cancel_scope.cancel()
