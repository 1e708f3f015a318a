"""TLS where configured: h2 and HTTP/3 for content, wss for the gateway; bad TLS config fails at start."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from pingpull.client.content import ContentClient
from pingpull.client.signal import DeviceSync
from tests.support.h3_client import h3_get
from tests.support.process import pingpull_serve
from tests.support.waiting import wait_until


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    issued.private_key_pem.write_to_path(str(paths["key"]))
    issued.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    return paths


@pytest.mark.e2e
async def test_h2_h3_and_wss_with_a_private_ca(tmp_path: Path, certs: dict[str, Path]) -> None:
    env = {"PINGPULL_TLS_CERT": str(certs["cert"]), "PINGPULL_TLS_KEY": str(certs["key"])}
    client_tls = ssl.create_default_context(cafile=str(certs["ca"]))
    with pingpull_serve(tmp_path / "data", env=env) as server:
        content_url = server.content_url.replace("127.0.0.1", "localhost")
        assert content_url.startswith("https://")
        signal_url = server.urls["signal"].replace("127.0.0.1", "localhost")
        assert signal_url.startswith("https://")
        async with httpx.AsyncClient(base_url=content_url, verify=client_tls, http2=True) as http:
            health = await http.get("/healthz")
            assert health.http_version == "HTTP/2"
            assert "h3=" in health.headers.get("alt-svc", "")
            content = ContentClient(http)
            alice = await content.create_account("alice")
            bob = await content.create_account("bob")
            as_alice, as_bob = content.with_token(alice["token"]), content.with_token(bob["token"])
            conversation = await as_alice.create_conversation([bob["user_id"]])

            received: list[dict[str, object]] = []

            async def collect(items: list[dict[str, object]]) -> None:
                received.extend(items)

            sync = DeviceSync(
                as_bob, signal_url, bob["token"], on_items=collect, transports=["ws"], ssl_context=client_tls
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.run)
                await wait_until(lambda: sync.transport == "ws")
                await as_alice.send(conversation["id"], "over wss")
                await wait_until(lambda: len(received) == 1)
                nursery.cancel_scope.cancel()

        # HTTP/3: the same port number, over QUIC.
        status, _, body = await trio.to_thread.run_sync(h3_get, f"{content_url}/healthz", str(certs["ca"]))
        assert status == 200 and json.loads(body) == {"status": "ok"}
        status, _, body = await trio.to_thread.run_sync(
            lambda: h3_get(
                f"{content_url}/v1/inbox?after=0",
                str(certs["ca"]),
                {"authorization": f"Bearer {bob['token']}"},
            )
        )
        assert status == 200
        page = json.loads(body)
        assert page["head"] == 1 and page["items"][0]["message"]["body"] == "over wss"


@pytest.mark.e2e
@pytest.mark.parametrize("problem", ["missing key", "mismatch", "unreadable", "only cert"])
def test_bad_tls_configuration_fails_at_start(tmp_path: Path, certs: dict[str, Path], problem: str) -> None:
    other = trustme.CA().issue_cert("localhost")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("not a key")
    unreadable.chmod(0)
    env_by_problem = {
        "missing key": {
            "PINGPULL_TLS_CERT": str(certs["cert"]),
            "PINGPULL_TLS_KEY": str(tmp_path / "nope.pem"),
        },
        "mismatch": {"PINGPULL_TLS_CERT": str(certs["cert"]), "PINGPULL_TLS_KEY": str(other_key)},
        "unreadable": {"PINGPULL_TLS_CERT": str(certs["cert"]), "PINGPULL_TLS_KEY": str(unreadable)},
        "only cert": {"PINGPULL_TLS_CERT": str(certs["cert"])},
    }
    import os

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pingpull.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--content-port",
            "0",
            "--signal-port",
            "0",
        ],
        env={**os.environ, **env_by_problem[problem]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "TLS" in result.stderr or "tls_" in result.stderr


@pytest.mark.e2e
def test_dev_tls_makes_a_ca_and_serves_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pingpull_serve(data, "--dev-tls") as server:
        ca = data / "dev-tls" / "ca.pem"
        assert ca.is_file()
        url = server.content_url.replace("127.0.0.1", "localhost")
        result = subprocess.run(
            ["curl", "-sf", "--http2", "--cacert", str(ca), "-w", " %{http_version}", f"{url}/healthz"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.endswith(" 2")
        assert f"--cacert {ca}" in server.log()
