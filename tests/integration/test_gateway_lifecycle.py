"""Heartbeats reap ghosts; draining says GOAWAY on every transport; the gateway keeps serving."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request

from pingpull import wire
from tests.support.live import LiveContent


async def _raw_websocket(stack: LiveContent, token: str) -> tuple[trio.SocketStream, WSConnection, bytes]:
    """A hand-driven WebSocket client: completes the handshake, then answers nothing on its own."""
    parts = urlsplit(stack.signal_url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 0)
    client = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(client.send(Request(host="localhost", target=f"/v1/signal?access_token={token}")))
    buffered = b""
    accepted = False
    while not accepted:
        data = await stream.receive_some()
        client.receive_data(data)
        for event in client.events():
            if isinstance(event, AcceptConnection):
                accepted = True
        buffered = data
    return stream, client, buffered


async def test_a_client_that_stops_answering_pings_is_dropped(stack: LiveContent) -> None:
    bob, _ = await stack.account("bob")
    assert stack.gateway is not None
    stream, client, _ = await _raw_websocket(stack, bob.token or "")
    settings = stack.gateway.settings
    pinged = False
    started = trio.current_time()
    with trio.fail_after(settings.ping_interval_s + settings.ping_timeout_s + 2):
        while True:
            data = await stream.receive_some()
            if not data:
                break  # the gateway closed the TCP connection: the ghost is reaped
            client.receive_data(data)
            pinged = pinged or any(isinstance(e, Ping) for e in client.events())
    elapsed = trio.current_time() - started
    assert pinged
    assert elapsed <= settings.ping_interval_s + settings.ping_timeout_s + 0.5
    assert len(stack.gateway.hub) == 0


async def test_a_client_that_answers_pings_stays(stack: LiveContent) -> None:
    alice, _ = await stack.account("alice")
    bob, b = await stack.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    url = stack.signal_url.replace("http://", "ws://") + f"/v1/signal?access_token={bob.token}"
    assert stack.gateway is not None
    async with open_websocket_url(url) as ws:  # trio-websocket answers pings by itself
        assert wire.decode(await ws.get_message()).kind == wire.Kind.HELLO
        await trio.sleep(3 * (stack.gateway.settings.ping_interval_s + stack.gateway.settings.ping_timeout_s))
        sent = await alice.send(conversation["id"], "still there?")
        with trio.fail_after(5):
            assert wire.decode(await ws.get_message()).ref == sent["id"]


async def test_drain_sends_goaway_and_1012_then_refuses_new_sessions(stack: LiveContent) -> None:
    bob, _ = await stack.account("bob")
    gateway = stack.gateway
    assert gateway is not None
    url = stack.signal_url.replace("http://", "ws://") + f"/v1/signal?access_token={bob.token}"
    headers = {"Authorization": f"Bearer {bob.token}"}
    async with (
        open_websocket_url(url) as ws,
        httpx.AsyncClient(base_url=stack.signal_url, headers=headers, timeout=10) as http,
    ):
        assert wire.decode(await ws.get_message()).kind == wire.Kind.HELLO
        async with http.stream("GET", "/v1/signal/sse") as sse:
            lines = sse.aiter_lines()
            async for line in lines:
                if line.startswith("data:"):
                    break
            poll_result: list[httpx.Response] = []

            async def hang() -> None:
                poll_result.append(await http.get("/v1/signal/poll", params={"after": 0, "timeout": 30}))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                await trio.sleep(0.2)
                nursery.start_soon(gateway.drain)
                with trio.fail_after(5):
                    goaway = wire.decode(await ws.get_message())
                    assert goaway.kind == wire.Kind.GOAWAY
                    assert goaway.arg * 100 <= gateway.settings.goaway_max_delay_ms + 100
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.get_message()
                    assert closed.value.reason is not None
                    assert closed.value.reason.code == 1012
                    sse_tail = [line async for line in lines]
                assert any(line.startswith("retry:") for line in sse_tail)
                assert "event: goaway" in sse_tail
            assert poll_result[0].status_code == 503
            assert "Retry-After" in poll_result[0].headers
    async with httpx.AsyncClient(base_url=stack.signal_url, timeout=5) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        refused = await http.get("/v1/signal/poll", params={"after": 0}, headers=headers)
        assert refused.status_code == 503
