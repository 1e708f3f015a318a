"""Bad input at the gateway: a clear 4xx or close code for the offender, service as usual for the rest."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from pingpull import wire
from tests.support.live import LiveContent


async def _connect(stack: LiveContent) -> trio.SocketStream:
    parts = urlsplit(stack.signal_url)
    return await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 0)


async def _exchange(stack: LiveContent, raw: bytes, *, read_timeout_s: float = 5) -> bytes:
    """Send raw bytes, read until the gateway closes (or the timeout)."""
    stream = await _connect(stack)
    received = b""
    async with stream:
        await stream.send_all(raw)
        with trio.move_on_after(read_timeout_s):
            while True:
                try:
                    data = await stream.receive_some()
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                received += data
    return received


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def _still_serving(stack: LiveContent) -> None:
    async with httpx.AsyncClient(base_url=stack.signal_url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200


def _ws_upgrade(
    token: str, *extra: bytes, version: bytes = b"13", key: bytes | None = b"dGhlIHNhbXBsZSBub25jZQ=="
) -> bytes:
    lines = [
        b"GET /v1/signal?access_token=" + token.encode() + b" HTTP/1.1",
        b"Host: localhost",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: " + version,
    ]
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    return b"\r\n".join([*lines, *extra]) + b"\r\n\r\n"


async def test_bad_heads_get_specific_statuses(stack: LiveContent) -> None:
    bob, _ = await stack.account("bob")
    token = bob.token or ""
    cases = [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"POST /v1/signal/poll HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /v1/signal HTTP/1.1\r\nHost: x\r\n\r\n", 401),
        (b"GET /v1/signal?access_token=garbage HTTP/1.1\r\nHost: x\r\n\r\n", 401),
        (f"GET /v1/signal HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode(), 426),
        (_ws_upgrade(token, version=b"8"), 426),
        (_ws_upgrade(token, key=None), 400),
        (
            b"GET /v1/signal/poll?after=x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\n\r\n",
            400,
        ),
        (
            b"GET /v1/signal/poll HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\n\r\n",
            400,
        ),
        (
            b"GET /v1/signal/sse HTTP/1.1\r\nHost: x\r\nLast-Event-ID: -4\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\n\r\n",
            400,
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBroken Header\r\n\r\n", 400),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    ]
    for raw, status in cases:
        response = await _exchange(stack, raw)
        assert response, raw[:60]
        assert _status(response) == status, (raw[:80], response[:200])
        if status >= 400:
            body = json.loads(response.split(b"\r\n\r\n", 1)[1])
            assert body["status"] == status
    await _still_serving(stack)


async def test_slowloris_head_is_cut_off(stack: LiveContent) -> None:
    assert stack.gateway is not None
    timeout_s = stack.gateway.settings.handshake_timeout_s
    stream = await _connect(stack)
    started = trio.current_time()
    received = b""
    async with stream:
        with trio.move_on_after(timeout_s + 3):
            try:
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: yes":
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)
            except trio.BrokenResourceError:
                pass  # the gateway gave up on us: its answer is waiting to be read
            received = await stream.receive_some()
    assert _status(received) == 408
    assert trio.current_time() - started <= timeout_s + 2.5
    await _still_serving(stack)


async def _websocket(stack: LiveContent, token: str) -> tuple[trio.SocketStream, WSConnection]:
    stream = await _connect(stack)
    client = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(client.send(Request(host="localhost", target=f"/v1/signal?access_token={token}")))
    while True:
        client.receive_data(await stream.receive_some())
        if any(isinstance(e, AcceptConnection) for e in client.events()):
            return stream, client


async def _close_code(stream: trio.SocketStream, client: WSConnection) -> int | None:
    with trio.fail_after(5):
        while True:
            data = await stream.receive_some()
            if not data:
                return None
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, CloseConnection):
                    return int(event.code)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (TextMessage(data="hello"), 1008),
        (BytesMessage(data=b"x" * 10), 1008),
        (BytesMessage(data=b"x" * 5000), 1009),
    ],
)
async def test_client_data_frames_are_refused(stack: LiveContent, message: object, code: int) -> None:
    bob, _ = await stack.account("bob")
    stream, client = await _websocket(stack, bob.token or "")
    async with stream:
        await stream.send_all(client.send(message))  # type: ignore[arg-type]
        assert await _close_code(stream, client) == code
    await _still_serving(stack)


async def test_unmasked_client_frame_is_a_protocol_error(stack: LiveContent) -> None:
    bob, _ = await stack.account("bob")
    stream, client = await _websocket(stack, bob.token or "")
    async with stream:
        await stream.send_all(b"\x89\x00")  # an unmasked ping: clients must mask every frame
        assert await _close_code(stream, client) == 1002
    await _still_serving(stack)


async def test_other_connections_keep_receiving_while_one_misbehaves(stack: LiveContent) -> None:
    alice, _ = await stack.account("alice")
    bob, b = await stack.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    good, good_client = await _websocket(stack, bob.token or "")
    async with good:
        bad, bad_client = await _websocket(stack, bob.token or "")
        async with bad:
            await bad.send_all(bad_client.send(TextMessage(data="nope")))
            assert await _close_code(bad, bad_client) == 1008
        sent = await alice.send(conversation["id"], "still flowing")
        frames: list[wire.Frame] = []
        with trio.fail_after(5):
            while len(frames) < 2:
                good_client.receive_data(await good.receive_some())
                frames += [wire.decode(e.data) for e in good_client.events() if isinstance(e, BytesMessage)]
        assert frames[0].kind == wire.Kind.HELLO
        assert (frames[1].kind, frames[1].ref) == (wire.Kind.NEW, sent["id"])
