"""`pingpull serve` end to end: who is pushed depends on what the device does on its signal channel.

One process (content, gateway, push worker with the log provider), real clients:
- an app holding a WebSocket and acking what it pulls (the SDK's DeviceSync) is never pushed;
- a ghost (a WebSocket that stays open and answers pings but never pulls or acks) gets exactly
  one push, once `content.ack_grace_s` has passed;
- an offline app gets exactly one push for a burst, at once: the send saw no receiver, made the job
  due now and woke the worker in the same process, without waiting for its poll.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from pingpull import wire
from pingpull.client.content import ContentClient
from pingpull.client.signal import DeviceSync
from tests.support.process import ServerProcess, pingpull_serve

ACK_GRACE_S = 2.0


def _pushes(server: ServerProcess) -> list[dict[str, Any]]:
    found = []
    for line in server.log().splitlines():
        start = line.find('{"event":"push"')
        if start >= 0:
            found.append(json.loads(line[start:]))
    return found


async def _account(http: httpx.AsyncClient, handle: str) -> tuple[ContentClient, dict[str, Any]]:
    created = (await http.post("/v1/accounts", json={"handle": handle})).json()
    client = ContentClient(http, created["token"])
    await client.register_push(created["device_id"], "fcm", f"fcm-{handle}-" + "x" * 32)
    return client, created


async def _send_burst(alice: ContentClient, to: dict[str, Any], count: int = 3) -> float:
    conversation = await alice.create_conversation([to["user_id"]])
    for i in range(count):
        await alice.send(conversation["id"], f"secret {i}")
    return time.monotonic()


@pytest.mark.e2e
async def test_acking_app_is_not_pushed_ghost_once_after_grace_offline_once_at_once(tmp_path: Path) -> None:
    env = {"PINGPULL_PUSH_POLL_INTERVAL_S": "0.1", "PINGPULL_CONTENT_ACK_GRACE_S": str(ACK_GRACE_S)}
    processes = contextlib.ExitStack()
    # Started from a thread: the blocking wait for its ready line must not stall this trio run.
    server: ServerProcess = await trio.to_thread.run_sync(
        processes.enter_context, pingpull_serve(tmp_path / "data", env=env)
    )
    try:
        async with (
            httpx.AsyncClient(base_url=server.content_url, timeout=10) as http,
            trio.open_nursery() as nursery,
        ):
            alice, _ = await _account(http, "alice")
            acker_client, acker = await _account(http, "acker")
            _, ghost = await _account(http, "ghost")
            _, offline = await _account(http, "offline")

            pulled: list[Any] = []

            async def on_items(items: list[dict[str, Any]]) -> None:
                pulled.extend(items)

            sync = DeviceSync(
                acker_client, server.urls["signal"], acker["token"], on_items=on_items, transports=["ws"]
            )
            nursery.start_soon(sync.run)
            ghost_url = (
                server.urls["signal"].replace("http://", "ws://", 1)
                + f"/v1/signal?access_token={ghost['token']}"
            )
            ghost_ws = await nursery.start(_ghost, ghost_url)
            with trio.fail_after(10):
                await sync.connected.wait()

            sent_at = {
                "acker": await _send_burst(alice, acker),
                "ghost": await _send_burst(alice, ghost),
                "offline": await _send_burst(alice, offline),
            }
            device = {
                acker["device_id"]: "acker",
                ghost["device_id"]: "ghost",
                offline["device_id"]: "offline",
            }
            first_push_at: dict[str, float] = {}
            deadline = time.monotonic() + ACK_GRACE_S + 5
            while time.monotonic() < deadline and len(first_push_at) < 2:
                for push in _pushes(server):
                    first_push_at.setdefault(device[int(push["device_id"])], time.monotonic())
                await trio.sleep(0.02)
            await trio.sleep(ACK_GRACE_S)  # long enough for a second push or a late one to the acker

            pushes = _pushes(server)
            assert sorted(device[int(p["device_id"])] for p in pushes) == ["ghost", "offline"], pushes
            assert "secret" not in json.dumps(pushes)
            # The offline app is woken at once (well within the 2 s grace); the ghost only after it.
            assert first_push_at["offline"] - sent_at["offline"] < 1.0
            assert first_push_at["ghost"] - sent_at["ghost"] >= ACK_GRACE_S - 0.3
            # The acker really was online: it got the frames, pulled and acked all three messages.
            assert [item["message"]["body"] for item in pulled] == [f"secret {i}" for i in range(3)]
            assert sync.cursor == 3
            assert ghost_ws.frames and all(f.kind == wire.Kind.NEW for f in ghost_ws.frames[1:])
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(processes.close)


class _Ghost:
    def __init__(self) -> None:
        self.frames: list[wire.Frame] = []


async def _ghost(url: str, *, task_status: trio.TaskStatus[_Ghost] = trio.TASK_STATUS_IGNORED) -> None:
    """Connected, receiving, answering pings (trio-websocket does that) - and never pulling or acking."""
    ghost = _Ghost()
    async with open_websocket_url(url) as ws:
        hello = await ws.get_message()
        assert isinstance(hello, bytes)
        ghost.frames.append(wire.decode(hello))
        task_status.started(ghost)
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                ghost.frames.append(wire.decode(message))


@pytest.mark.e2e
def test_offline_push_wakes_the_worker_without_waiting_for_its_poll(tmp_path: Path) -> None:
    env = {"PINGPULL_PUSH_POLL_INTERVAL_S": "60"}
    with (
        pingpull_serve(tmp_path / "data", env=env) as server,
        httpx.Client(base_url=server.content_url) as http,
    ):
        time.sleep(0.5)  # the worker's first pass is done: it now sleeps for up to a minute
        alice = http.post("/v1/accounts", json={"handle": "alice"}).json()
        bob = http.post("/v1/accounts", json={"handle": "bob"}).json()
        registered = http.put(
            f"/v1/devices/{bob['device_id']}/push",
            json={"provider": "apns", "token": "a" * 64},
            headers={"Authorization": f"Bearer {bob['token']}"},
        )
        assert registered.status_code == 204
        as_alice = {"Authorization": f"Bearer {alice['token']}"}
        conversation = http.post(
            "/v1/conversations", json={"members": [bob["user_id"]]}, headers=as_alice
        ).json()
        sent = http.post(
            f"/v1/conversations/{conversation['id']}/messages",
            json={"body": "wake up"},
            headers={**as_alice, "Idempotency-Key": "k1"},
        )
        assert sent.status_code == 201
        started = time.monotonic()
        while time.monotonic() - started < 5 and not _pushes(server):
            time.sleep(0.02)
        assert [p["device_id"] for p in _pushes(server)] == [bob["device_id"]], server.log()
        assert time.monotonic() - started < 2  # not the 60 s poll
