"""hypercorn's trio worker with pingpull's keep-alive deadline (`content_svc.keep_alive`), over raw
sockets: an idle connection closes when its keep-alive runs out and not before; every request moves
the deadline and a slow answer is never cut by it; a connection the peer closed is closed at once
instead of sitting in CLOSE_WAIT for the keep-alive; on shutdown an idle connection closes at once
and a busy one after its answer.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from content_svc import keep_alive


class SlowApp:
    """Answers `/` at once and `/slow` when `release` is set (or after `X-Sleep` seconds)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.slow_started = trio.Event()
        self.started = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.started += 1
        asked = dict(scope["headers"])
        if scope["path"] == "/slow":
            self.slow_started.set()
            if b"x-sleep" in asked:
                await trio.sleep(float(asked[b"x-sleep"]))
            else:
                await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(autouse=True)
def patched_hypercorn() -> Any:
    was_installed = keep_alive.installed()
    keep_alive.install()
    yield
    if not was_installed:
        keep_alive.uninstall()


class Server:
    def __init__(self, url: str, app: SlowApp, shutdown: trio.Event) -> None:
        self.url, self.app, self.shutdown = url, app, shutdown


async def open_server(nursery: trio.Nursery, keep_alive_s: float) -> Server:
    app, shutdown = SlowApp(), trio.Event()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.keep_alive_timeout = keep_alive_s
    config.graceful_timeout = 10
    binds: list[str] = await nursery.start(
        functools.partial(serve, app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    )
    return Server(binds[0], app, shutdown)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.h11 = stream, h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, url: str) -> Client:
        host, port = url.split("://")[1].rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def send(self, target: str = "/", *fields: tuple[str, str]) -> None:
        request = h11.Request(method="GET", target=target, headers=[("Host", "t"), *fields])
        await self.stream.send_all(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))

    async def answer(self) -> bytes:
        body = b""
        with trio.fail_after(10):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.h11.start_next_cycle()
                    return body
                elif isinstance(event, h11.ConnectionClosed):
                    raise AssertionError("closed before the answer ended")

    async def get(self, target: str = "/", *fields: tuple[str, str]) -> bytes:
        await self.send(target, *fields)
        return await self.answer()

    async def closed_by_server_within(self, seconds: float) -> bool:
        """True if the server closes the connection (EOF or reset) within `seconds`."""
        with trio.move_on_after(seconds):
            try:
                return await self.stream.receive_some(65536) == b""
            except trio.BrokenResourceError:
                return True
        return False


async def test_an_idle_connection_closes_when_its_keep_alive_runs_out_and_not_before(
    nursery: trio.Nursery,
) -> None:
    server = await open_server(nursery, keep_alive_s=0.6)
    client = await Client.connect(server.url)
    assert await client.get() == b"ok"
    idle_from = trio.current_time()
    assert await client.closed_by_server_within(5)
    assert trio.current_time() - idle_from >= 0.6 - 0.05  # trio's clock; deadlines never fire early


async def test_every_request_moves_the_deadline(nursery: trio.Nursery) -> None:
    server = await open_server(nursery, keep_alive_s=0.5)
    client = await Client.connect(server.url)
    for _ in range(6):  # 1.8 s on one connection, three keep-alives' worth
        assert await client.get() == b"ok"
        await trio.sleep(0.3)
    assert await client.get() == b"ok"
    assert server.app.started == 7


async def test_a_slow_answer_is_not_cut_by_the_keep_alive(nursery: trio.Nursery) -> None:
    server = await open_server(nursery, keep_alive_s=0.3)
    client = await Client.connect(server.url)
    assert await client.get("/slow", ("X-Sleep", "1.0")) == b"ok"
    assert await client.get() == b"ok"  # and the connection is still usable after it


async def test_a_connection_the_peer_closed_is_closed_at_once_not_after_the_keep_alive(
    nursery: trio.Nursery,
) -> None:
    server = await open_server(nursery, keep_alive_s=60)
    client = await Client.connect(server.url)
    assert await client.get() == b"ok"
    # Later, not straight after the answer: hypercorn only noticed a close that raced the answer.
    await trio.sleep(0.2)
    client.stream.socket.shutdown(socket.SHUT_WR)  # the peer is done; the server must not wait 60 s
    assert await client.closed_by_server_within(5)


async def test_on_shutdown_an_idle_connection_closes_at_once_and_a_busy_one_after_its_answer(
    nursery: trio.Nursery,
) -> None:
    server = await open_server(nursery, keep_alive_s=60)
    idle, busy = await Client.connect(server.url), await Client.connect(server.url)
    assert await idle.get() == b"ok"
    await busy.send("/slow")
    await server.app.slow_started.wait()
    server.shutdown.set()
    assert await idle.closed_by_server_within(5)
    assert not await busy.closed_by_server_within(0.3)  # its request is still being answered
    server.app.release.set()
    assert await busy.answer() == b"ok"
    assert await busy.closed_by_server_within(5)
