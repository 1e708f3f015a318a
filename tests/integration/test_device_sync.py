"""The client SDK keeps a device in sync over each transport, falls back, and survives a drain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

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
