"""Invalid-token answers against the APNs fake: a misconfigured topic deletes nothing (decision 0002).

The worker runs against the real outbox (SQLite and PostgreSQL) and the real APNs provider
(aioapns on the bridge, HTTP/2 + TLS) talking to `tests.support.fake_apns`, which knows the app's
bundle id: a push for any other topic is answered 400 DeviceTokenNotForTopic, for every token, as
Apple does when the sender's topic is wrong.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from pingpull.aio import AsyncioBridge
from pingpull.db.schema import devices, push_jobs
from push_bridge import payloads
from push_bridge.providers.apns import ApnsConfig, ApnsEndpoint, ApnsProvider
from push_bridge.worker import PushWorker, WorkerSettings
from tests.support.fake_apns import ApnsReply, FakeApns, open_fake_apns
from tests.support.live import LiveContent

KEY_ID, TEAM_ID, TOPIC = "ABC123DEFG", "TEAM456XYZ", "dev.pingpull.app"


class Clock:
    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def apns_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def fake_apns(ca: trustme.CA, apns_key: ec.EllipticCurvePrivateKey) -> AsyncIterator[FakeApns]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["h2"])
    async with open_fake_apns(
        context, provider_keys={KEY_ID: apns_key.public_key()}, team_id=TEAM_ID, app_topic=TOPIC
    ) as fake:
        yield fake


@pytest.fixture
async def apns(
    bridge: AsyncioBridge, fake_apns: FakeApns, ca: trustme.CA, apns_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[ApnsProvider]:
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.set_alpn_protocols(["h2"])
    pem = apns_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    endpoint = ApnsEndpoint("127.0.0.1", fake_apns.port)
    config = ApnsConfig(KEY_ID, TEAM_ID, TOPIC, key_pem=pem, production=endpoint, sandbox=endpoint)
    provider = await ApnsProvider.open(bridge, config, ssl_context=client)
    yield provider
    await provider.aclose()


@pytest.fixture
def clock(live: LiveContent) -> Clock:
    clock = Clock()
    live.context.clock_ms = clock
    return clock


def make_worker(live: LiveContent, apns: ApnsProvider, clock: Clock, topic: str) -> PushWorker:
    assert live.kernel.database is not None
    return PushWorker(
        live.kernel.database,
        {"apns": apns},
        WorkerSettings(payload=payloads.PayloadOptions(apns_topic=topic)),
        clock_ms=clock,
        rng=random.Random(7),
    )


async def _recipients(live: LiveContent, tokens: list[str]) -> tuple[Any, dict[str, tuple[int, int]]]:
    """alice, and per token (device id, conversation id) of a recipient holding that token."""
    alice, _ = await live.account("alice")
    out = {}
    for i, token in enumerate(tokens):
        client, created = await live.account(f"user{i}")
        await client.register_push(created["device_id"], "apns", token)
        conversation = await alice.create_conversation([created["user_id"]])
        out[token] = (created["device_id"], conversation["id"])
    return alice, out


async def _state(live: LiveContent) -> tuple[dict[int, str | None], dict[int, Any]]:
    """(push token per device, push job per device)."""

    async def read(conn: AsyncConnection) -> tuple[dict[int, str | None], dict[int, Any]]:
        tokens = {r.id: r.push_token for r in await conn.execute(select(devices.c.id, devices.c.push_token))}
        jobs = {r.device_id: r for r in await conn.execute(select(push_jobs))}
        return tokens, jobs

    assert live.kernel.database is not None
    return await live.kernel.database.read(read)


def _metric(worker: PushWorker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


async def test_a_wrong_topic_deletes_no_token_and_raises_the_alarm(
    live: LiveContent,
    apns: ApnsProvider,
    fake_apns: FakeApns,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = [f"{i:064x}" for i in range(1, 4)]
    alice, recipients = await _recipients(live, tokens)
    for _, conversation in recipients.values():
        await alice.send(conversation, "hi")
    worker = make_worker(live, apns, clock, topic="dev.pingpull.someone-else")
    caplog.set_level(logging.INFO, logger="pingpull.push")

    for attempt in (1, 2):
        assert await worker.run_once() == 3
        assert len(fake_apns.requests) == 3 * attempt
        assert {r.headers["apns-topic"] for r in fake_apns.requests} == {"dev.pingpull.someone-else"}
        device_tokens, jobs = await _state(live)
        for token, (device_id, _) in recipients.items():
            assert device_tokens[device_id] == token  # kept
            job = jobs[device_id]  # and the job is retried, not dropped
            assert job.attempts == attempt and job.claim_id is None and job.not_before_ms > clock()
        clock.advance(worker.settings.retry.cap_s + 1)

    assert _metric(worker, "pingpull_push_tokens_removed_total", provider="apns") == 0
    labels = {"provider": "apns", "environment": "production"}
    assert _metric(worker, "pingpull_push_config_suspected", **labels) == 1
    kept = _metric(
        worker, "pingpull_push_tokens_kept_suspect_config_total", reason="DeviceTokenNotForTopic", **labels
    )
    assert kept == 6
    alarms = _events(caplog, "push_config_suspected")
    assert len(alarms) == 1 and alarms[0].levelno == logging.ERROR  # once per episode, not per token
    assert len(_events(caplog, "push_token_kept")) == 5


async def test_a_bad_token_is_removed_once_the_provider_has_delivered_to_another(
    live: LiveContent,
    apns: ApnsProvider,
    fake_apns: FakeApns,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A sandbox (development build) token registered as production: production says BadDeviceToken.
    bad, good = "b" * 64, "c" * 64
    fake_apns.script(bad, ApnsReply.error(400, "BadDeviceToken"), ApnsReply.error(400, "BadDeviceToken"))
    alice, recipients = await _recipients(live, [bad, good])
    (bad_device, bad_conversation), (good_device, good_conversation) = recipients[bad], recipients[good]
    worker = make_worker(live, apns, clock, topic=TOPIC)
    caplog.set_level(logging.INFO, logger="pingpull.push")
    labels = {"provider": "apns", "environment": "production"}

    # Nothing has been delivered yet: the configuration is unproven, so the token is kept.
    await alice.send(bad_conversation, "one")
    assert await worker.run_once() == 1
    device_tokens, jobs = await _state(live)
    assert device_tokens[bad_device] == bad and jobs[bad_device].attempts == 1
    assert _metric(worker, "pingpull_push_config_suspected", **labels) == 1

    # A delivery to another token proves the configuration works...
    await alice.send(good_conversation, "two")
    assert await worker.run_once() == 1
    assert _metric(worker, "pingpull_push_config_suspected", **labels) == 0
    assert len(_events(caplog, "push_config_recovered")) == 1

    # ...so the same answer on the retry removes the token, and the job ends.
    clock.advance(worker.settings.retry.cap_s + 1)
    assert await worker.run_once() == 1
    device_tokens, jobs = await _state(live)
    assert device_tokens[bad_device] is None and bad_device not in jobs
    assert device_tokens[good_device] == good and jobs == {}
    assert [r.token for r in fake_apns.requests] == [bad, good, bad]
    assert _metric(worker, "pingpull_push_tokens_removed_total", provider="apns") == 1
