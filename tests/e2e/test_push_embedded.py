"""`pingpull serve` with its embedded push bridge: an offline app gets one (logged) wake-up per burst."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.support.process import pingpull_serve


def _pushes(log: str) -> list[dict[str, object]]:
    found = []
    for line in log.splitlines():
        start = line.find('{"event":"push"')
        if start >= 0:
            found.append(json.loads(line[start:]))
    return found


@pytest.mark.e2e
def test_offline_device_gets_one_logged_push_for_a_burst(tmp_path: Path) -> None:
    env = {"PINGPULL_PUSH_POLL_INTERVAL_S": "0.2"}
    with (
        pingpull_serve(tmp_path / "data", env=env) as server,
        httpx.Client(base_url=server.content_url) as http,
    ):
        alice = http.post("/v1/accounts", json={"handle": "alice"}).json()
        bob = http.post("/v1/accounts", json={"handle": "bob"}).json()
        as_bob = {"Authorization": f"Bearer {bob['token']}"}
        as_alice = {"Authorization": f"Bearer {alice['token']}"}
        registered = http.put(
            f"/v1/devices/{bob['device_id']}/push",
            json={"provider": "fcm", "token": "f" * 40},
            headers=as_bob,
        )
        assert registered.status_code == 204
        conversation = http.post(
            "/v1/conversations", json={"members": [bob["user_id"]]}, headers=as_alice
        ).json()
        for i in range(4):
            sent = http.post(
                f"/v1/conversations/{conversation['id']}/messages",
                json={"body": f"burst {i}"},
                headers={**as_alice, "Idempotency-Key": f"burst-{i}"},
            )
            assert sent.status_code == 201
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _pushes(server.log()):
            time.sleep(0.05)
        time.sleep(1.0)  # long enough for a second push, were there to be one
        pushes = _pushes(server.log())
        assert len(pushes) == 1, server.log()
        assert pushes[0]["device_id"] == bob["device_id"]
        assert pushes[0]["provider"] == "fcm"
        assert int(str(pushes[0]["seq"])) >= 1
        assert "burst" not in json.dumps(pushes)  # content-free


@pytest.mark.e2e
def test_push_metrics_are_scraped_with_the_content_service_or_alone(tmp_path: Path) -> None:
    with pingpull_serve(tmp_path / "all") as server:
        metrics = httpx.get(f"{server.content_url}/metrics").text
        assert "pingpull_push_decisions" in metrics
        assert "pingpull_content_requests" in metrics
    env = {"PINGPULL_PUSH_METRICS_PORT": "0"}
    with pingpull_serve(tmp_path / "push", "push", env=env) as alone:
        url = alone.urls["push_metrics"]
        assert url.endswith("/metrics")
        assert "pingpull_push_outcomes" in httpx.get(url).text
        assert httpx.get(url.replace("/metrics", "/healthz")).status_code == 200
