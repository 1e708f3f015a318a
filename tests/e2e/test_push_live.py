"""`pingpull serve` with push.provider = live, against APNs and FCM fakes that speak the real protocols.

The fakes run in this test's trio run; the server is a child process configured only through its
environment, as an operator would: .p8 key, team and key ids, topic, host overrides, a CA to trust,
a service-account file whose token_uri is the fake OAuth endpoint.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.fake_apns import ApnsReply, open_fake_apns
from tests.support.fake_fcm import open_fake_fcm
from tests.support.process import pingpull_serve
from tests.support.waiting import wait_until

KEY_ID, TEAM_ID, TOPIC = "ABC123DEFG", "TEAM456XYZ", "dev.pingpull.e2e"
PROJECT, SA_EMAIL = "pingpull-e2e", "push@pingpull-e2e.iam.gserviceaccount.com"
DEAD, FLAKY, HEALTHY = "a" * 64, "b" * 64, "c" * 64
FCM_TOKEN = "fcm-token-" + "f" * 30


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _tokens(database: Path) -> dict[int, str | None]:
    with sqlite3.connect(database) as conn:
        return dict(conn.execute("SELECT id, push_token FROM devices").fetchall())


@pytest.mark.e2e
async def test_live_providers_deliver_retry_and_remove_dead_tokens(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    server_context.set_alpn_protocols(["h2"])
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    apns_key, sa_key = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(_pem(apns_key))

    async with (
        open_fake_apns(
            server_context, provider_keys={KEY_ID: apns_key.public_key()}, team_id=TEAM_ID
        ) as apns,
        open_fake_fcm(PROJECT, SA_EMAIL, sa_key.public_key()) as fcm,
    ):
        apns.script(DEAD, ApnsReply.error(410, "Unregistered"))
        apns.script(
            FLAKY,
            ApnsReply.error(429, "TooManyRequests", **{"retry-after": "1"}),
            ApnsReply.error(503, "ServiceUnavailable"),
        )
        account = tmp_path / "service-account.json"
        account.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": PROJECT,
                    "private_key_id": "0123456789abcdef",
                    "private_key": _pem(sa_key),
                    "client_email": SA_EMAIL,
                    "client_id": "100000000000000000001",
                    "token_uri": fcm.token_uri,
                }
            )
        )
        endpoint = f"127.0.0.1:{apns.port}"
        env = {
            "PINGPULL_PUSH_PROVIDER": "live",
            "PINGPULL_PUSH_POLL_INTERVAL_S": "0.2",
            "PINGPULL_PUSH_RETRY_INITIAL_S": "0.2",
            "PINGPULL_PUSH_RETRY_MAX_S": "0.5",
            "PINGPULL_PUSH_APNS_KEY_FILE": str(key_file),
            "PINGPULL_PUSH_APNS_KEY_ID": KEY_ID,
            "PINGPULL_PUSH_APNS_TEAM_ID": TEAM_ID,
            "PINGPULL_PUSH_APNS_TOPIC": TOPIC,
            "PINGPULL_PUSH_APNS_PRODUCTION_HOST": endpoint,
            "PINGPULL_PUSH_APNS_SANDBOX_HOST": endpoint,
            "PINGPULL_PUSH_APNS_CA_FILE": str(ca_file),
            "PINGPULL_PUSH_FCM_SERVICE_ACCOUNT_FILE": str(account),
            "PINGPULL_PUSH_FCM_ENDPOINT_BASE": fcm.endpoint_base,
        }
        data = tmp_path / "data"
        with pingpull_serve(data, env=env) as server:
            async with httpx.AsyncClient(base_url=server.content_url) as http:
                alice = (await http.post("/v1/accounts", json={"handle": "alice"})).json()
                as_alice = {"Authorization": f"Bearer {alice['token']}"}
                recipients = {}
                for handle, provider, token in (
                    ("dead", "apns", DEAD),
                    ("flaky", "apns", FLAKY),
                    ("healthy", "apns", HEALTHY),
                    ("android", "fcm", FCM_TOKEN),
                ):
                    account_json = (await http.post("/v1/accounts", json={"handle": handle})).json()
                    headers = {"Authorization": f"Bearer {account_json['token']}"}
                    registered = await http.put(
                        f"/v1/devices/{account_json['device_id']}/push",
                        json={"provider": provider, "token": token},
                        headers=headers,
                    )
                    assert registered.status_code == 204
                    recipients[handle] = account_json
                    conversation = (
                        await http.post(
                            "/v1/conversations", json={"members": [account_json["user_id"]]}, headers=as_alice
                        )
                    ).json()
                    sent = await http.post(
                        f"/v1/conversations/{conversation['id']}/messages",
                        json={"body": f"hello {handle}"},
                        headers={**as_alice, "Idempotency-Key": f"k-{handle}"},
                    )
                    assert sent.status_code == 201

            def settled() -> bool:
                flaky = apns.for_token(FLAKY)
                return (
                    len(apns.for_token(DEAD)) == 1
                    and len(flaky) == 3
                    and len(apns.for_token(HEALTHY)) == 1
                    and len(fcm.for_token(FCM_TOKEN)) == 1
                    and _tokens(data / "pingpull.sqlite3")[recipients["dead"]["device_id"]] is None
                )

            await wait_until(settled, timeout_s=20, poll_s=0.1)
            await trio.sleep(1.0)  # nothing more must come: no double sends
            assert len(apns.for_token(FLAKY)) == 3 and len(apns.for_token(HEALTHY)) == 1
            tokens = _tokens(data / "pingpull.sqlite3")
            assert tokens[recipients["healthy"]["device_id"]] == HEALTHY
            assert tokens[recipients["android"]["device_id"]] == FCM_TOKEN
            # One provider JWT for every APNs push, and content-free payloads.
            assert len(set(apns.jwts())) == 1
            assert all("hello" not in json.dumps(r.payload) for r in apns.for_token(HEALTHY))
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{server.content_url}/metrics")).text
            assert 'pingpull_push_tokens_removed_total{provider="apns"} 1.0' in metrics
