"""HELLO after a restart carries the real inbox head, so a device that is up to date pulls nothing.

The in-process bus starts empty; `pingpull serve` (everything in one process, with the database)
fills in the heads it lacks from `users.inbox_head`. With Redis, a head Redis lost is read from the
database the same way wherever the process has one; a gateway alone (`serve signal`) says unknown.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from pingpull import wire
from tests.support.process import pingpull_serve


async def _hello(signal_url: str, token: str) -> wire.Frame:
    url = signal_url.replace("http://", "ws://") + f"/v1/signal?access_token={token}"
    async with open_websocket_url(url) as ws:
        with trio.fail_after(10):
            frame = wire.decode(await ws.get_message())  # type: ignore[arg-type]
    assert frame.kind == wire.Kind.HELLO
    return frame


async def _two_accounts_and_messages(content_url: str, count: int) -> tuple[dict[str, str], dict[str, str]]:
    async with httpx.AsyncClient(base_url=content_url, timeout=10) as http:
        alice = (await http.post("/v1/accounts", json={"handle": f"a{uuid.uuid4().hex[:8]}"})).json()
        bob = (await http.post("/v1/accounts", json={"handle": f"b{uuid.uuid4().hex[:8]}"})).json()
        auth = {"Authorization": f"Bearer {alice['token']}"}
        conversation = (
            await http.post("/v1/conversations", json={"members": [bob["user_id"]]}, headers=auth)
        ).json()
        for i in range(count):
            sent = await http.post(
                f"/v1/conversations/{conversation['id']}/messages",
                json={"body": f"m{i}"},
                headers={**auth, "Idempotency-Key": f"k{i}"},
            )
            assert sent.status_code == 201, sent.text
    return alice, bob


@pytest.mark.e2e
async def test_hello_after_a_restart_carries_the_head_from_the_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pingpull_serve(data) as server:
        alice, bob = await _two_accounts_and_messages(server.content_url, 3)
        assert (await _hello(server.urls["signal"], bob["token"])).head == 3
    with pingpull_serve(data) as server:  # a new process: its in-memory bus starts empty
        assert (await _hello(server.urls["signal"], bob["token"])).head == 3
        assert (await _hello(server.urls["signal"], alice["token"])).head == 3  # the sender's inbox too
        # A user who never received anything has head 0, not "unknown": nothing to pull.
        async with httpx.AsyncClient(base_url=server.content_url, timeout=10) as http:
            carol = (await http.post("/v1/accounts", json={"handle": "carol"})).json()
        assert (await _hello(server.urls["signal"], carol["token"])).head == 0


def _run(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pingpull.cli", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
async def test_with_redis_a_lost_head_comes_from_the_database_where_there_is_one(
    tmp_path: Path, redis_url: str
) -> None:
    keys = tmp_path / "keys"
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}"
    _run("keys", "create", "--keys-dir", str(keys))
    _run("migrate", "--database-url", database)
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    env = {
        "PINGPULL_TOKENS_KEYS_DIR": str(keys),
        "PINGPULL_REDIS_URL": redis_url,
        "PINGPULL_REDIS_PREFIX": prefix,
        "PINGPULL_DATABASE_URL": database,
        "PINGPULL_CONTENT_REGISTRATION": "open",
    }
    with (
        pingpull_serve(tmp_path / "all", env=env) as both,
        pingpull_serve(tmp_path / "gw", "signal", env=env) as gateway_alone,
    ):
        _, bob = await _two_accounts_and_messages(both.content_url, 2)
        assert (await _hello(gateway_alone.urls["signal"], bob["token"])).head == 2
        # Redis loses the head (as after a restart without persistence).
        _redis_del(redis_url, f"{prefix}:head:{bob['user_id']}")
        assert (await _hello(gateway_alone.urls["signal"], bob["token"])).head == wire.UNKNOWN_HEAD
        # A process with the database reads it back, and writes it back for everyone.
        assert (await _hello(both.urls["signal"], bob["token"])).head == 2
        assert (await _hello(gateway_alone.urls["signal"], bob["token"])).head == 2


def _redis_del(redis_url: str, key: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.delete(key) == 1
    finally:
        client.close()
