"""Several processes on one Redis: a content service and two gateways, as deployed."""

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


def _run(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pingpull.cli", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def _shared_deployment(tmp_path: Path, redis_url: str) -> dict[str, str]:
    """Keys and a migrated database shared by several processes on one Redis: their environment."""
    keys = tmp_path / "keys"
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}"
    _run("keys", "create", "--keys-dir", str(keys))
    _run("migrate", "--database-url", database)
    return {
        "PINGPULL_TOKENS_KEYS_DIR": str(keys),
        "PINGPULL_REDIS_URL": redis_url,
        "PINGPULL_REDIS_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
        "PINGPULL_DATABASE_URL": database,
        "PINGPULL_CONTENT_REGISTRATION": "open",
    }


@pytest.mark.e2e
async def test_two_gateways_deliver_to_devices_on_either(tmp_path: Path, redis_url: str) -> None:
    env = _shared_deployment(tmp_path, redis_url)
    with (
        pingpull_serve(tmp_path / "content", "content", env=env) as content,
        pingpull_serve(tmp_path / "gw-a", "signal", env=env) as gateway_a,
        pingpull_serve(tmp_path / "gw-b", "signal", env=env) as gateway_b,
    ):
        async with httpx.AsyncClient(base_url=content.content_url, timeout=10) as http:
            accounts = {}
            for handle in ("alice", "bobby", "carol"):
                accounts[handle] = (await http.post("/v1/accounts", json={"handle": handle})).json()
            alice = {"Authorization": f"Bearer {accounts['alice']['token']}"}
            group = (
                await http.post(
                    "/v1/conversations",
                    json={
                        "members": [accounts["bobby"]["user_id"], accounts["carol"]["user_id"]],
                        "title": "g",
                    },
                    headers=alice,
                )
            ).json()

            def ws_url(gateway_url: str, who: str) -> str:
                return (
                    gateway_url.replace("http://", "ws://")
                    + f"/v1/signal?access_token={accounts[who]['token']}"
                )

            async with (
                open_websocket_url(ws_url(gateway_a.urls["signal"], "bobby")) as bob_ws,
                open_websocket_url(ws_url(gateway_b.urls["signal"], "carol")) as carol_ws,
            ):
                for ws in (bob_ws, carol_ws):
                    assert wire.decode(await ws.get_message()).kind == wire.Kind.HELLO
                await trio.sleep(0.3)  # let both gateways' SUBSCRIBEs reach Redis
                sent = (
                    await http.post(
                        f"/v1/conversations/{group['id']}/messages",
                        json={"body": "to both gateways"},
                        headers={**alice, "Idempotency-Key": "multi-1"},
                    )
                ).json()
                for ws in (bob_ws, carol_ws):
                    with trio.fail_after(5):
                        frame = wire.decode(await ws.get_message())
                    assert (frame.kind, frame.head, frame.ref) == (wire.Kind.NEW, 1, sent["id"])


@pytest.mark.e2e
def test_a_push_bridge_in_its_own_process_is_woken_through_redis(tmp_path: Path, redis_url: str) -> None:
    """Deployed layout: the content service sees no receiver, makes the job due and PUBLISHes a wake-up;
    the push bridge (another process, polling only once a minute) pushes within a moment."""
    import json
    import time

    env = {
        **_shared_deployment(tmp_path, redis_url),
        "PINGPULL_PUSH_POLL_INTERVAL_S": "60",
        "PINGPULL_PUSH_METRICS_PORT": "0",
    }

    def pushes(log: str) -> list[int]:
        return [
            json.loads(line[line.find('{"event":"push"') :])["device_id"]
            for line in log.splitlines()
            if '{"event":"push"' in line
        ]

    with (
        pingpull_serve(tmp_path / "content", "content", "signal", env=env) as content,
        pingpull_serve(tmp_path / "push", "push", env=env) as push,
        httpx.Client(base_url=content.content_url, timeout=10) as http,
    ):
        time.sleep(0.5)  # the worker's first pass is over: it now sleeps for a minute
        alice = http.post("/v1/accounts", json={"handle": "alice"}).json()
        bob = http.post("/v1/accounts", json={"handle": "bobby"}).json()
        registered = http.put(
            f"/v1/devices/{bob['device_id']}/push",
            json={"provider": "fcm", "token": "f" * 64},
            headers={"Authorization": f"Bearer {bob['token']}"},
        )
        assert registered.status_code == 204
        as_alice = {"Authorization": f"Bearer {alice['token']}"}
        conversation = http.post("/v1/conversations", json={"members": [bob["user_id"]]}, headers=as_alice)
        sent = http.post(
            f"/v1/conversations/{conversation.json()['id']}/messages",
            json={"body": "wake up"},
            headers={**as_alice, "Idempotency-Key": "k1"},
        )
        assert sent.status_code == 201
        started = time.monotonic()
        while time.monotonic() - started < 10 and not pushes(push.log()):
            time.sleep(0.02)
        assert pushes(push.log()) == [bob["device_id"]], push.log()
        assert time.monotonic() - started < 3, "the worker waited for its poll"
