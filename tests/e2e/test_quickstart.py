"""The README's promise: `pingpull serve` plus curl alone, two accounts exchange a message."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.process import pingpull_serve

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_quickstart_with_curl(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the quickstart needs curl"
    with pingpull_serve(tmp_path / "data") as server:
        result = subprocess.run(
            ["bash", str(ROOT / "docs" / "quickstart.sh"), server.content_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        inbox = json.loads(lines[lines.index(next(x for x in lines if "/v1/inbox?after=0" in x)) + 1])
        assert inbox["head"] == 1
        assert inbox["items"][0]["message"]["body"] == "Hello Bob!"
        assert lines[-1] == "204"
        # Tokens and bodies never reach the log.
        log = server.log()
        assert "Hello Bob!" not in log
        assert "eyJ" not in log
        assert "request" in log and "status=201" in log


@pytest.mark.e2e
def test_the_sdk_example_exchanges_a_message(tmp_path: Path) -> None:
    with pingpull_serve(tmp_path / "data") as server:
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "docs" / "sdk_example.py"),
                server.content_url,
                server.urls["signal"],
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines() == ["1 hello from the SDK"]


@pytest.mark.e2e
def test_serve_stops_cleanly_on_sigterm_and_keeps_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pingpull_serve(data) as server:
        created = httpx.post(f"{server.content_url}/v1/accounts", json={"handle": "keeper"}).json()
        assert httpx.get(f"{server.content_url}/readyz").status_code == 200
    assert server.process.returncode == 0, server.log()
    assert "shutdown_requested" in server.log()
    with pingpull_serve(data) as again:
        response = httpx.get(
            f"{again.content_url}/v1/inbox", headers={"Authorization": f"Bearer {created['token']}"}
        )
        assert response.status_code == 200  # same key, same database: the old token still works


@pytest.mark.e2e
def test_h2c_prior_knowledge(tmp_path: Path) -> None:
    with pingpull_serve(tmp_path / "data") as server:
        result = subprocess.run(
            [
                "curl",
                "-s",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                f"{server.content_url}/healthz",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert result.stdout == "2"


@pytest.mark.e2e
async def test_sigterm_drains_websocket_clients_with_goaway(tmp_path: Path) -> None:
    import signal

    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    from pingpull import wire

    env = {"PINGPULL_SIGNAL_DRAIN_WINDOW_S": "0.5", "PINGPULL_SIGNAL_DRAIN_TIMEOUT_S": "3"}
    with pingpull_serve(tmp_path / "data", env=env) as server:
        async with httpx.AsyncClient(base_url=server.content_url) as http:
            token = (await http.post("/v1/accounts", json={"handle": "drained"})).json()["token"]
        url = server.urls["signal"].replace("http://", "ws://") + f"/v1/signal?access_token={token}"
        async with open_websocket_url(url) as ws:
            assert wire.decode(await ws.get_message()).kind == wire.Kind.HELLO
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert wire.decode(await ws.get_message()).kind == wire.Kind.GOAWAY
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == 1012
        with trio.fail_after(10):
            await trio.to_thread.run_sync(server.process.wait)
        assert server.process.returncode == 0
        assert "drain_finished" in server.log()
