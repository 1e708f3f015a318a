"""The client SDK keeps a device in sync over each transport, falls back, and survives a drain."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pingpull.client.content import ContentClient
from pingpull.client.errors import ClientError
from pingpull.client.signal import DeviceSync
from pingpull.tokens import ensure_keys
from tests.support.live import LiveContent, live_content, settings_for_test
from tests.support.services import SqliteTemplate
from tests.support.waiting import wait_until


class Inbox:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def __call__(self, items: list[dict[str, Any]]) -> None:
        self.items.extend(items)

    def bodies(self) -> list[str]:
        return [item["message"]["body"] for item in self.items]


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_each_transport_delivers_everything_exactly_once(stack: LiveContent, transport: str) -> None:
    alice, _ = await stack.account("alice")
    bob, b = await stack.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    await alice.send(conversation["id"], "sent while offline")
    inbox = Inbox()
    sync = DeviceSync(
        bob, stack.signal_url, bob.token or "", on_items=inbox, transports=[transport], poll_timeout_s=5
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run)
        await wait_until(lambda: inbox.bodies() == ["sent while offline"])
        assert sync.transport == transport
        for i in range(5):
            await alice.send(conversation["id"], f"live {i}")
        await wait_until(lambda: len(inbox.items) == 6)
        nursery.cancel_scope.cancel()
    assert inbox.bodies() == ["sent while offline"] + [f"live {i}" for i in range(5)]
    assert [item["seq"] for item in inbox.items] == list(range(1, 7))
    assert sync.cursor == 6
    assert (await bob.pull(0))["head"] == 6


@pytest.fixture
async def ws_disabled(tmp_path: Path, sqlite_template: SqliteTemplate) -> AsyncIterator[LiveContent]:
    ensure_keys(tmp_path / "keys")
    settings = settings_for_test(
        sqlite_template.fresh_copy(tmp_path), tmp_path, signal={"transports": "sse,poll"}
    )
    async with live_content(settings, with_gateway=True) as server:
        yield server


async def test_refused_websocket_falls_back_to_sse(ws_disabled: LiveContent) -> None:
    alice, _ = await ws_disabled.account("alice")
    bob, b = await ws_disabled.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    inbox = Inbox()
    sync = DeviceSync(bob, ws_disabled.signal_url, bob.token or "", on_items=inbox)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run)
        await wait_until(lambda: sync.transport is not None)
        assert sync.transport == "sse"
        await alice.send(conversation["id"], "via sse")
        await wait_until(lambda: inbox.bodies() == ["via sse"])
        nursery.cancel_scope.cancel()


async def test_goaway_reconnects_and_nothing_is_lost(stack: LiveContent) -> None:
    alice, _ = await stack.account("alice")
    bob, b = await stack.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    inbox = Inbox()
    sync = DeviceSync(bob, stack.signal_url, bob.token or "", on_items=inbox, transports=["ws"])
    assert stack.gateway is not None
    gateway = stack.gateway
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run)
        await wait_until(lambda: sync.transport == "ws")
        # Drain without closing the listener: the client comes straight back, as it would to a
        # sibling gateway, and the messages sent meanwhile arrive by its pull.
        drained = trio.Event()

        async def drain_then_reopen() -> None:
            await gateway.drain()
            gateway.draining = False
            drained.set()

        nursery.start_soon(drain_then_reopen)
        for i in range(3):
            await alice.send(conversation["id"], f"during drain {i}")
        await drained.wait()
        await wait_until(lambda: 3 in sync.seen_kinds)  # a GOAWAY was received
        await alice.send(conversation["id"], "after")
        await wait_until(lambda: len(inbox.items) == 4)
        nursery.cancel_scope.cancel()
    assert inbox.bodies() == [f"during drain {i}" for i in range(3)] + ["after"]


class _CountingTransport(httpx.MockTransport):
    """A mock gateway that counts how often a client closes it."""

    def __init__(self, handler: Callable[[httpx.Request], Awaitable[httpx.Response]]) -> None:
        super().__init__(handler)
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def test_one_http_client_serves_every_session_and_is_closed_on_exit() -> None:
    polls: list[httpx.Request] = []

    async def gateway(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/signal/poll"
        polls.append(request)
        if len(polls) <= 3:  # three sessions end with "draining, come back at once"
            return httpx.Response(503, headers={"Retry-After": "0"})
        await trio.sleep(0.01)
        return httpx.Response(204)

    async def content_api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"head": 0, "items": []})

    signal_transport = _CountingTransport(gateway)
    async with httpx.AsyncClient(
        base_url="http://content", transport=httpx.MockTransport(content_api)
    ) as http:
        sync = DeviceSync(
            ContentClient(http, "tok"),
            "http://gateway:1",
            "tok",
            transports=["poll"],
            http_transport=signal_transport,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run)
            await wait_until(lambda: len(polls) >= 6)
            assert signal_transport.closed == 0  # four sessions so far, one client, still open
            nursery.cancel_scope.cancel()
    assert signal_transport.closed == 1
    assert {r.headers["Authorization"] for r in polls} == {"Bearer tok"}
    assert {r.url.host for r in polls} == {"gateway"}


@pytest.mark.parametrize("url", ["http://gw:8080", "ws://gw:8080", "HTTP://gw"])
def test_a_tls_context_for_a_plain_url_is_refused_at_construction(url: str) -> None:
    context = ssl.create_default_context()
    with pytest.raises(ClientError, match="not TLS"):
        DeviceSync(ContentClient(httpx.AsyncClient()), url, "tok", ssl_context=context)


@pytest.mark.parametrize(
    ("url", "normalised"),
    [("https://gw:443/", "https://gw:443"), ("wss://gw", "https://gw"), ("ws://gw:1", "http://gw:1")],
)
def test_gateway_urls_are_normalised(url: str, normalised: str) -> None:
    context = ssl.create_default_context() if normalised.startswith("https") else None
    sync = DeviceSync(ContentClient(httpx.AsyncClient()), url, "tok", ssl_context=context)
    assert sync.signal_url == normalised


@pytest.mark.parametrize("url", ["gw:8080", "ftp://gw", "http://", ""])
def test_a_malformed_gateway_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ClientError, match="signal_url"):
        DeviceSync(ContentClient(httpx.AsyncClient()), url, "tok")


async def test_a_ws_url_works_for_every_transport(stack: LiveContent) -> None:
    alice, _ = await stack.account("alice")
    bob, b = await stack.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    ws_url = stack.signal_url.replace("http://", "ws://")
    for transport in ("ws", "sse", "poll"):
        inbox = Inbox()
        sync = DeviceSync(bob, ws_url, bob.token or "", on_items=inbox, transports=[transport])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run)
            await wait_until(lambda: sync.transport == transport)  # noqa: B023 - awaited here
            await alice.send(conversation["id"], f"via {transport}")
            await wait_until(lambda: f"via {transport}" in inbox.bodies())  # noqa: B023 - awaited here
            nursery.cancel_scope.cancel()
        assert inbox.bodies() == [f"via {t}" for t in ("ws", "sse", "poll")[: len(inbox.bodies())]]
