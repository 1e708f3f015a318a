"""hypercorn's trio worker as pingpull patches it: ``http.response.zerocopysend`` (`content_svc.zero_copy`)
and writes bounded by a stall timeout (`content_svc.socket_writes`). A raw ASGI app sends a file span
(or the same bytes read into memory), a raw socket client reads what arrives on the wire.

Advertised on HTTP/1.1 without TLS only; framed by Content-Length or chunked like any body; a file that
ends before its span closes the connection instead of sending a short answer; a reader slower than the
file keeps the sender waiting on the socket, not spinning; a reader that stops reading is disconnected
after the stall timeout, and the server goes on serving. The content service listens with its own
backlog, not hypercorn's default of 100.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trustme
from hypercorn.config import Config
from hypercorn.trio import serve

from content_svc import coalesced_writes, socket_writes, zero_copy
from tests.support.live import LiveContent

FILE_BYTES = os.urandom(3 * 1024 * 1024 + 17)
STALL_S = 0.5

Scope = dict[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]


class SpanApp:
    """Answers every request with one span of `path`, as the request's headers ask."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.scopes.append(scope)
        asked = dict(scope["headers"])
        offset, count = int(asked.get(b"x-offset", b"0")), int(asked.get(b"x-count", b"0"))
        headers = [] if b"x-chunked" in asked else [(b"content-length", str(count).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if zero_copy.ZERO_COPY_SEND not in scope["extensions"] or b"x-in-memory" in asked:
            with self.path.open("rb") as file:
                file.seek(offset)
                await send({"type": "http.response.body", "body": file.read(count)})
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            await send({"type": zero_copy.ZERO_COPY_SEND, "file": fd, "offset": offset, "count": count})
        finally:
            os.close(fd)


@pytest.fixture(autouse=True)
def patched_hypercorn() -> Any:
    socket_writes.install(STALL_S)
    zero_copy.install()
    coalesced_writes.install()
    yield
    zero_copy.uninstall()
    coalesced_writes.uninstall()
    socket_writes.install()  # the default timeout again, as the content app would


@pytest.fixture
def span_file(tmp_path: Path) -> Path:
    path = tmp_path / "object"
    path.write_bytes(FILE_BYTES)
    return path


async def start_server(nursery: trio.Nursery, app: App, config: Config | None = None) -> str:
    config = config or Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    binds: list[str] = await nursery.start(serve, app, config)  # type: ignore[arg-type]
    return binds[0]


@pytest.fixture
async def server(span_file: Path) -> AsyncIterator[tuple[str, SpanApp]]:
    app = SpanApp(span_file)
    async with trio.open_nursery() as nursery:
        yield await start_server(nursery, app), app
        nursery.cancel_scope.cancel()


async def connect(url: str, *, receive_buffer: int | None = None) -> trio.SocketStream:
    host, port = url.split("://")[1].rsplit(":", 1)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect((host, int(port)))
    return trio.SocketStream(sock)


async def exchange(
    stream: trio.abc.Stream,
    client: h11.Connection,
    method: str,
    fields: list[tuple[str, str]],
    pace_s: float = 0.0,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request on an open connection; `pace_s` sleeps before each read of the answer."""
    request = h11.Request(method=method, target="/", headers=[("Host", "t"), *fields])
    await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
    status, head, body = 0, [], bytearray()
    with trio.fail_after(20):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                await trio.sleep(pace_s)
                client.receive_data(await stream.receive_some(64 * 1024))
            elif isinstance(event, h11.Response):
                status, head = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                client.start_next_cycle()
                return status, head, bytes(body)


def span(offset: int, count: int, *more: tuple[str, str]) -> list[tuple[str, str]]:
    return [("X-Offset", str(offset)), ("X-Count", str(count)), *more]


async def test_spans_arrive_exactly_on_one_kept_alive_connection(server: tuple[str, SpanApp]) -> None:
    url, app = server
    stream, client = await connect(url), h11.Connection(h11.CLIENT)
    async with stream:
        for offset, count in [(0, len(FILE_BYTES)), (5, 1), (1 << 20, 1 << 20), (len(FILE_BYTES) - 3, 3)]:
            status, head, body = await exchange(stream, client, "GET", span(offset, count))
            assert (status, body) == (200, FILE_BYTES[offset : offset + count])
            assert (b"content-length", str(count).encode()) in head
    assert all(zero_copy.ZERO_COPY_SEND in scope["extensions"] for scope in app.scopes)


async def test_no_answer_waits_for_a_kernel_timer(server: tuple[str, SpanApp]) -> None:
    """A head sent with MSG_MORE before sendfile held each answer's end back ~180 ms (Linux's cork
    timer) once a span took more than one splice: 20 answers took 3.6 s instead of a few ms."""
    url, _ = server
    stream, client = await connect(url), h11.Connection(h11.CLIENT)
    async with stream:
        with trio.fail_after(2):
            for i in range(20):
                offset = 12345 * i  # not page-aligned: 64 KiB then spans 17 pages
                assert (await exchange(stream, client, "GET", span(offset, 65536)))[2] == FILE_BYTES[offset:][
                    :65536
                ]


async def test_a_chunked_answer_frames_the_span(server: tuple[str, SpanApp]) -> None:
    url, _ = server
    stream, client = await connect(url), h11.Connection(h11.CLIENT)
    async with stream:
        for _ in range(2):  # the connection stays usable after a chunked span
            status, head, body = await exchange(stream, client, "GET", span(10, 70_000, ("X-Chunked", "1")))
            assert (status, body) == (200, FILE_BYTES[10:70_010])
            assert (b"transfer-encoding", b"chunked") in head


async def test_head_sends_no_body(server: tuple[str, SpanApp]) -> None:
    url, _ = server
    stream, client = await connect(url), h11.Connection(h11.CLIENT)
    async with stream:
        status, head, body = await exchange(stream, client, "HEAD", span(0, 1000))
        assert (status, body) == (200, b"")
        assert (b"content-length", b"1000") in head
        status, _, body = await exchange(stream, client, "GET", span(0, 10))  # nothing stray on the wire
        assert (status, body) == (200, FILE_BYTES[:10])


async def test_a_slow_reader_gets_every_byte(server: tuple[str, SpanApp]) -> None:
    url, _ = server
    stream, client = await connect(url, receive_buffer=16 * 1024), h11.Connection(h11.CLIENT)
    async with stream:
        status, _, body = await exchange(stream, client, "GET", span(0, len(FILE_BYTES)), pace_s=0.001)
    assert (status, body) == (200, FILE_BYTES)


async def test_a_file_shorter_than_its_span_closes_the_connection_and_the_server_keeps_serving(
    server: tuple[str, SpanApp],
) -> None:
    url, _ = server
    stream, client = await connect(url), h11.Connection(h11.CLIENT)
    async with stream:
        short = pytest.raises(h11.RemoteProtocolError, match="received 100 bytes, expected 1000")
        with trio.fail_after(2), short:
            await exchange(stream, client, "GET", span(len(FILE_BYTES) - 100, 1000))  # closed at once
    stream, client = await connect(url), h11.Connection(h11.CLIENT)
    async with stream:
        assert (await exchange(stream, client, "GET", span(0, 4)))[2] == FILE_BYTES[:4]


async def test_not_advertised_over_tls(span_file: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    config = Config()
    config.certfile, config.keyfile = str(cert), str(key)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    app = SpanApp(span_file)
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, app, config)
        raw = await connect(url)
        stream = trio.SSLStream(raw, client_tls, server_hostname="127.0.0.1")
        async with stream:
            status, _, body = await exchange(stream, h11.Connection(h11.CLIENT), "GET", span(7, 1 << 20))
        nursery.cancel_scope.cancel()
    assert (status, body) == (200, FILE_BYTES[7 : 7 + (1 << 20)])
    assert app.scopes and all(zero_copy.ZERO_COPY_SEND not in scope["extensions"] for scope in app.scopes)


@pytest.mark.parametrize("how", ["sendfile", "in memory"])
async def test_a_reader_that_stops_reading_is_disconnected_and_the_server_keeps_serving(
    server: tuple[str, SpanApp], how: str
) -> None:
    url, _ = server
    extra = [("X-In-Memory", "1")] if how == "in memory" else []
    stream = await connect(url, receive_buffer=16 * 1024)
    client = h11.Connection(h11.CLIENT)
    async with stream:
        request = h11.Request(
            method="GET", target="/", headers=[("Host", "t"), *span(0, len(FILE_BYTES), *extra)]
        )
        await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
        await trio.sleep(STALL_S * 3)  # reads nothing: the server's writes stall
        received = 0
        with trio.fail_after(5):  # what was in flight, then the end: the server has closed
            try:
                while chunk := await stream.receive_some(1 << 20):
                    received += len(chunk)
            except trio.BrokenResourceError:
                pass  # a reset, if the close found unread bytes
        assert received < len(FILE_BYTES)
    stream, client = await connect(url), h11.Connection(h11.CLIENT)
    async with stream:
        assert (await exchange(stream, client, "GET", span(0, 4)))[2] == FILE_BYTES[:4]


async def test_the_content_service_listens_with_its_configured_backlog(live: LiveContent) -> None:
    """hypercorn's default backlog is 100; a reconnect storm needs the setting's (capped by somaxconn)."""
    port = live.base_url.rsplit(":", 1)[1]
    listing = await trio.run_process(["ss", "-ltnH", f"sport = :{port}"], capture_stdout=True)
    somaxconn = int(await trio.Path("/proc/sys/net/core/somaxconn").read_text())
    lines = listing.stdout.decode().splitlines()
    backlogs = {int(line.split()[2]) for line in lines if line.startswith("LISTEN")}
    assert backlogs == {min(live.context.settings.listen_backlog, somaxconn)}
