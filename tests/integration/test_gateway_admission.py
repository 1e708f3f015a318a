"""Admission control: past its limits the gateway refuses clearly instead of degrading everyone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from pingpull import wire
from pingpull.tokens import ensure_keys
from tests.support.live import LiveContent, live_content, settings_for_test
from tests.support.services import SqliteTemplate


async def _stack(tmp_path: Path, template: SqliteTemplate, **signal: object) -> AsyncIterator[LiveContent]:
    ensure_keys(tmp_path / "keys")
    settings = settings_for_test(template.fresh_copy(tmp_path), tmp_path, signal=signal)
    async with live_content(settings, with_gateway=True) as server:
        yield server


@pytest.fixture
async def small(tmp_path: Path, sqlite_template: SqliteTemplate) -> AsyncIterator[LiveContent]:
    async for server in _stack(tmp_path, sqlite_template, max_connections=2, max_connections_per_device=2):
        yield server


@pytest.fixture
async def slow_handshakes(tmp_path: Path, sqlite_template: SqliteTemplate) -> AsyncIterator[LiveContent]:
    async for server in _stack(tmp_path, sqlite_template, handshake_rate_per_s=0.5, handshake_burst=2):
        yield server


def _ws(stack: LiveContent, token: str | None) -> str:
    return stack.signal_url.replace("http://", "ws://") + f"/v1/signal?access_token={token}"


async def test_over_max_connections_is_503_with_retry_after(small: LiveContent) -> None:
    users = [await small.account(f"user{i}") for i in range(3)]
    async with (
        open_websocket_url(_ws(small, users[0][0].token)),
        open_websocket_url(_ws(small, users[1][0].token)),
    ):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(_ws(small, users[2][0].token)):
                pass
        assert rejected.value.status_code == 503
        assert any(k.lower() == b"retry-after" for k, _ in rejected.value.headers or [])
    # Health checks are never refused: load balancers must see the truth.
    async with httpx.AsyncClient(base_url=small.signal_url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_handshake_rate_limit_is_503(slow_handshakes: LiveContent) -> None:
    bob, _ = await slow_handshakes.account("bob")
    statuses = []
    async with httpx.AsyncClient(
        base_url=slow_handshakes.signal_url, headers={"Authorization": f"Bearer {bob.token}"}
    ) as http:
        for _ in range(4):
            response = await http.get("/v1/signal/poll", params={"after": 0, "timeout": 0})
            statuses.append(response.status_code)
    assert statuses[:2] == [204, 204]
    assert statuses[2:] == [503, 503]


@pytest.fixture
async def two_per_device(tmp_path: Path, sqlite_template: SqliteTemplate) -> AsyncIterator[LiveContent]:
    async for server in _stack(tmp_path, sqlite_template, max_connections_per_device=2):
        yield server


async def test_a_device_over_its_connection_limit_loses_its_oldest(two_per_device: LiveContent) -> None:
    small = two_per_device
    bob, _ = await small.account("bob")
    assert small.gateway is not None
    async with open_websocket_url(_ws(small, bob.token)) as oldest:
        assert wire.decode(await oldest.get_message()).kind == wire.Kind.HELLO
        async with (
            open_websocket_url(_ws(small, bob.token)) as second,
            open_websocket_url(_ws(small, bob.token)) as newest,
        ):
            for ws in (second, newest):
                assert wire.decode(await ws.get_message()).kind == wire.Kind.HELLO
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await oldest.get_message()
            assert closed.value.reason is not None and closed.value.reason.code == 1000
            assert len(small.gateway.hub) == 2
