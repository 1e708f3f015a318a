"""The APNs and FCM providers against fakes that speak the real protocols on loopback.

APNs: aioapns on the asyncio bridge talks HTTP/2 over TLS (ALPN h2, a trustme CA) to
`tests.support.fake_apns`, which checks the provider JWTs like Apple. FCM: pyfcm, requests and
google-auth in worker threads talk HTTP/1.1 to `tests.support.fake_fcm`, which verifies the
service account's JWT-bearer grant and serves messages:send. Nothing of the libraries is mocked.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pingpull.aio import AsyncioBridge, open_asyncio_bridge
from push_bridge import payloads
from push_bridge.errors import ProviderConfigError
from push_bridge.providers.apns import ApnsConfig, ApnsEndpoint, ApnsProvider
from push_bridge.providers.base import Outcome, PushOutcome, PushRequest
from push_bridge.providers.fcm import FcmConfig, FcmProvider
from tests.support.fake_apns import ApnsReply, FakeApns, open_fake_apns
from tests.support.fake_fcm import FakeFcm, FcmReply, open_fake_fcm

KEY_ID = "ABC123DEFG"
TEAM_ID = "TEAM456XYZ"
TOPIC = "dev.pingpull.test"
PROJECT = "pingpull-test"
SA_EMAIL = "push@pingpull-test.iam.gserviceaccount.com"
OPTIONS = payloads.PayloadOptions(apns_topic=TOPIC)


def apns_token(i: int) -> str:
    return f"{i:064x}"


def apns_push(
    i: int, environment: str = "production", options: payloads.PayloadOptions = OPTIONS
) -> PushRequest:
    return payloads.apns_request(i, apns_token(i), environment, 100 + i, int(time.time()), options)


def fcm_token(i: int) -> str:
    return f"fcm-token-{i:04d}-" + "x" * 140


def fcm_push(i: int, options: payloads.PayloadOptions = OPTIONS) -> PushRequest:
    return payloads.fcm_request(i, fcm_token(i), 100 + i, options)


# -------------------------------------------------------------------------------------------------
# TLS and keys


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["h2"])
    return context


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    return context


@pytest.fixture(scope="module")
def apns_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def apns_key_pem(apns_key: ec.EllipticCurvePrivateKey) -> str:
    return apns_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def sa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -------------------------------------------------------------------------------------------------
# APNs fixtures


@pytest.fixture
async def fake_apns(
    server_context: ssl.SSLContext, apns_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[FakeApns]:
    async with open_fake_apns(
        server_context, provider_keys={KEY_ID: apns_key.public_key()}, team_id=TEAM_ID
    ) as fake:
        yield fake


OpenApns = Callable[..., Any]


@pytest.fixture
async def open_apns(
    bridge: AsyncioBridge, fake_apns: FakeApns, client_context: ssl.SSLContext, apns_key_pem: str
) -> AsyncIterator[OpenApns]:
    """A factory: providers pointed at `fake_apns` (both environments unless told), closed at the end."""
    opened: list[ApnsProvider] = []

    async def factory(**overrides: Any) -> ApnsProvider:
        endpoint = ApnsEndpoint("127.0.0.1", fake_apns.port)
        settings: dict[str, Any] = {"key_pem": apns_key_pem, "production": endpoint, "sandbox": endpoint}
        settings |= overrides
        provider = await ApnsProvider.open(
            bridge, ApnsConfig(KEY_ID, TEAM_ID, TOPIC, **settings), ssl_context=client_context
        )
        opened.append(provider)
        return provider

    yield factory
    for provider in opened:
        await provider.aclose()


@pytest.fixture
async def apns(open_apns: OpenApns) -> ApnsProvider:
    provider: ApnsProvider = await open_apns()
    return provider


# -------------------------------------------------------------------------------------------------
# APNs


async def test_apns_delivers_headers_and_payload_as_rendered(apns: ApnsProvider, fake_apns: FakeApns) -> None:
    request = apns_push(1)
    assert await apns.send(request) == PushOutcome(Outcome.DELIVERED, status=200)

    (record,) = fake_apns.requests
    assert fake_apns.connections[0].alpn == "h2"
    assert record.headers[":method"] == "POST"
    assert record.path == f"/3/device/{apns_token(1)}"
    assert record.headers["apns-push-type"] == "background"
    assert record.headers["apns-priority"] == "5"
    assert record.headers["apns-collapse-id"] == payloads.COLLAPSE_KEY
    assert record.headers["apns-topic"] == TOPIC
    # The absolute expiration payloads rendered, to the second (aioapns itself only takes a TTL).
    assert record.headers["apns-expiration"] == request.headers["apns-expiration"]
    assert record.payload == request.body == {"aps": {"content-available": 1}, "pp": {"head": 101}}
    assert record.authorization.startswith("bearer ")


async def test_apns_visible_alert_headers(apns: ApnsProvider, fake_apns: FakeApns) -> None:
    options = payloads.PayloadOptions(apns_topic=TOPIC, visible_alert=True)
    request = apns_push(2, options=options)
    assert (await apns.send(request)).outcome is Outcome.DELIVERED
    (record,) = fake_apns.requests
    assert record.headers["apns-push-type"] == "alert"
    assert record.headers["apns-priority"] == "10"
    assert record.payload == request.body
    assert "body" not in record.payload["aps"]["alert"]  # content-free: a localisable key only


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (ApnsReply.error(410, "Unregistered"), PushOutcome(Outcome.TOKEN_DEAD, "Unregistered", None, 410)),
        (ApnsReply.error(410, "ExpiredToken"), PushOutcome(Outcome.TOKEN_DEAD, "ExpiredToken", None, 410)),
        (
            ApnsReply.error(400, "BadDeviceToken"),
            PushOutcome(Outcome.TOKEN_INVALID, "BadDeviceToken", None, 400),
        ),
        (
            ApnsReply.error(400, "DeviceTokenNotForTopic"),
            PushOutcome(Outcome.TOKEN_INVALID, "DeviceTokenNotForTopic", None, 400),
        ),
        (
            ApnsReply.error(429, "TooManyRequests", retry_after="7"),
            PushOutcome(Outcome.RETRY, "TooManyRequests", 7.0, 429),
        ),
        (
            ApnsReply.error(503, "ServiceUnavailable"),
            PushOutcome(Outcome.RETRY, "ServiceUnavailable", None, 503),
        ),
        (
            ApnsReply.error(500, "InternalServerError"),
            PushOutcome(Outcome.RETRY, "InternalServerError", None, 500),
        ),
        (ApnsReply.error(400, "BadTopic"), PushOutcome(Outcome.REJECTED, "BadTopic", None, 400)),
        (
            ApnsReply.error(413, "PayloadTooLarge"),
            PushOutcome(Outcome.REJECTED, "PayloadTooLarge", None, 413),
        ),
        (
            ApnsReply.error(403, "InvalidProviderToken"),
            PushOutcome(Outcome.REJECTED, "InvalidProviderToken", None, 403),
        ),
    ],
    ids=lambda value: value.reason if isinstance(value, ApnsReply) else "",
)
async def test_apns_answers_become_outcomes(
    apns: ApnsProvider, fake_apns: FakeApns, reply: ApnsReply, expected: PushOutcome
) -> None:
    fake_apns.script(apns_token(3), reply)
    assert await apns.send(apns_push(3)) == expected
    # The connection is fine after an error answer.
    assert (await apns.send(apns_push(3))).outcome is Outcome.DELIVERED
    assert {record.connection for record in fake_apns.requests} == {0}


async def test_apns_retry_after_as_http_date(apns: ApnsProvider, fake_apns: FakeApns) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    fake_apns.script(apns_token(4), ApnsReply.error(503, "ServiceUnavailable", retry_after=when))
    outcome = await apns.send(apns_push(4))
    assert outcome.outcome is Outcome.RETRY
    assert outcome.retry_after_s is not None and 100 < outcome.retry_after_s <= 120


async def test_apns_requests_it_cannot_send_are_rejected_locally(
    apns: ApnsProvider, fake_apns: FakeApns
) -> None:
    request = apns_push(5)
    bad_type = PushRequest(
        5, "apns", request.token, "production", 1, {"apns-push-type": "carrier-pigeon"}, {}
    )
    unknown_header = PushRequest(5, "apns", request.token, "production", 1, {"apns-mood": "good"}, {})
    staging = PushRequest(5, "apns", request.token, "staging", 1, request.headers, request.body)
    assert (await apns.send(bad_type)).outcome is Outcome.REJECTED
    assert (await apns.send(unknown_header)).outcome is Outcome.REJECTED
    assert (await apns.send(staging)).outcome is Outcome.REJECTED
    assert fake_apns.requests == []


async def test_apns_one_jwt_for_many_pushes_and_reconnects(apns: ApnsProvider, fake_apns: FakeApns) -> None:
    for i in range(25):
        assert (await apns.send(apns_push(i, "production"))).outcome is Outcome.DELIVERED
    # aioapns mints a JWT per new connection; the provider must not, or Apple answers
    # TooManyProviderTokenUpdates (the fake enforces Apple's 20-minute rule).
    await fake_apns.drop_connections("close")
    for i in range(25, 50):
        environment = "sandbox" if i % 2 else "production"
        assert (await apns.send(apns_push(i, environment))).outcome is Outcome.DELIVERED
    assert len(fake_apns.requests) == 50
    assert len(fake_apns.connections) >= 2
    assert len(fake_apns.jwts()) == 1
    assert apns.tokens_minted == 1


async def test_apns_environments_go_to_their_hosts(
    bridge: AsyncioBridge,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    apns_key: ec.EllipticCurvePrivateKey,
    apns_key_pem: str,
) -> None:
    keys = {KEY_ID: apns_key.public_key()}
    async with (
        open_fake_apns(server_context, provider_keys=keys) as production,
        open_fake_apns(server_context, provider_keys=keys) as sandbox,
    ):
        config = ApnsConfig(
            KEY_ID,
            TEAM_ID,
            TOPIC,
            key_pem=apns_key_pem,
            production=ApnsEndpoint.parse(f"127.0.0.1:{production.port}", ApnsEndpoint("unused")),
            # "localhost" also checks the certificate's DNS name and the host header.
            sandbox=ApnsEndpoint.parse(f"localhost:{sandbox.port}", ApnsEndpoint("unused")),
        )
        provider = await ApnsProvider.open(bridge, config, ssl_context=client_context)
        try:
            assert (await provider.send(apns_push(1, "production"))).outcome is Outcome.DELIVERED
            assert (await provider.send(apns_push(2, "sandbox"))).outcome is Outcome.DELIVERED
            assert (await provider.send(apns_push(3, "sandbox"))).outcome is Outcome.DELIVERED
        finally:
            await provider.aclose()
    assert [record.token for record in production.requests] == [apns_token(1)]
    assert [record.token for record in sandbox.requests] == [apns_token(2), apns_token(3)]
    assert production.requests[0].headers["host"] == "127.0.0.1"
    assert sandbox.requests[0].headers["host"] == "localhost"
    assert production.jwts() == sandbox.jwts()  # one provider token for both environments


def test_apns_default_hosts_are_apples() -> None:
    config = ApnsConfig(KEY_ID, TEAM_ID, TOPIC, key_pem="-")
    assert (config.production.host, config.production.port) == ("api.push.apple.com", 443)
    assert (config.sandbox.host, config.sandbox.port) == ("api.sandbox.push.apple.com", 443)
    assert ApnsEndpoint.parse("", config.sandbox) == config.sandbox
    assert ApnsEndpoint.parse("[::1]:8443", config.sandbox) == ApnsEndpoint("::1", 8443)
    assert ApnsEndpoint.parse("proxy.internal", config.sandbox) == ApnsEndpoint("proxy.internal", 443)
    with pytest.raises(ProviderConfigError):
        ApnsEndpoint.parse("proxy.internal:https", config.sandbox)


async def test_apns_bad_key_fails_at_open(bridge: AsyncioBridge) -> None:
    with pytest.raises(ProviderConfigError):
        await ApnsProvider.open(bridge, ApnsConfig(KEY_ID, TEAM_ID, TOPIC, key_pem="not a key"))
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    with pytest.raises(ProviderConfigError):
        await ApnsProvider.open(bridge, ApnsConfig(KEY_ID, TEAM_ID, TOPIC, key_pem=rsa_pem))


async def test_apns_connection_closed_mid_push_retries_then_recovers(
    open_apns: OpenApns, fake_apns: FakeApns
) -> None:
    provider: ApnsProvider = await open_apns(max_connection_attempts=2)
    assert (await provider.send(apns_push(1))).outcome is Outcome.DELIVERED
    # Closed under the push on both attempts aioapns makes: RETRY, for the worker's backoff.
    fake_apns.script(apns_token(2), ApnsReply(action="close"), ApnsReply(action="close"))
    assert await provider.send(apns_push(2)) == PushOutcome(Outcome.RETRY, "ConnectionFailed")
    assert (await provider.send(apns_push(2))).outcome is Outcome.DELIVERED
    # Closed once: aioapns' second attempt, on a fresh connection, delivers it.
    fake_apns.script(apns_token(3), ApnsReply(action="close"))
    assert (await provider.send(apns_push(3))).outcome is Outcome.DELIVERED
    assert len(fake_apns.for_token(apns_token(3))) == 2
    assert len(fake_apns.jwts()) == 1


@pytest.mark.parametrize("how", ["reset", "goaway", "close"])
async def test_apns_connection_dropped_by_the_server_does_not_break_later_sends(
    bridge: AsyncioBridge, open_apns: OpenApns, fake_apns: FakeApns, how: str
) -> None:
    provider: ApnsProvider = await open_apns(max_connection_attempts=1)
    assert (await provider.send(apns_push(1))).outcome is Outcome.DELIVERED
    # Mid-push: the push in flight is lost (one attempt), the next one reconnects.
    fake_apns.script(apns_token(2), ApnsReply(action=how))  # type: ignore[arg-type]
    assert (await provider.send(apns_push(2))).outcome is Outcome.RETRY
    assert (await provider.send(apns_push(3))).outcome is Outcome.DELIVERED
    # While idle: aioapns' background reader sees the loss; nothing escapes it.
    await fake_apns.drop_connections(how)  # type: ignore[arg-type]

    async def pooled() -> int:
        return sum(len(pool.connections) for pool in provider._pools.values())

    with trio.fail_after(5):
        # Until aioapns has noticed and discarded the connection (its state lives on the asyncio loop).
        while await bridge.run(pooled):  # noqa: ASYNC110 - polling the other loop is the point
            await trio.sleep(0.01)
    assert (await provider.send(apns_push(4))).outcome is Outcome.DELIVERED
    assert len(fake_apns.connections) == 3
    assert len(fake_apns.jwts()) == 1


async def test_apns_unreachable_or_untrusted_server_is_retry(
    bridge: AsyncioBridge, fake_apns: FakeApns, apns_key_pem: str
) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    nowhere = ApnsEndpoint("127.0.0.1", closed_port)
    untrusted = ApnsEndpoint("127.0.0.1", fake_apns.port)  # the default context does not trust the test CA
    config = ApnsConfig(
        KEY_ID,
        TEAM_ID,
        TOPIC,
        key_pem=apns_key_pem,
        production=nowhere,
        sandbox=untrusted,
        max_connection_attempts=1,
    )
    provider = await ApnsProvider.open(bridge, config)
    try:
        assert await provider.send(apns_push(1, "production")) == PushOutcome(
            Outcome.RETRY, "ConnectionFailed"
        )
        assert await provider.send(apns_push(2, "sandbox")) == PushOutcome(Outcome.RETRY, "ConnectionFailed")
    finally:
        await provider.aclose()
    assert fake_apns.requests == []


async def test_apns_timeout_is_retry_and_the_next_push_reconnects(
    open_apns: OpenApns, fake_apns: FakeApns
) -> None:
    provider: ApnsProvider = await open_apns(request_timeout_s=1.0)
    fake_apns.script(apns_token(1), ApnsReply(action="hang"))
    assert await provider.send(apns_push(1)) == PushOutcome(Outcome.RETRY, "Timeout")
    assert (await provider.send(apns_push(2))).outcome is Outcome.DELIVERED
    assert len(fake_apns.connections) == 2  # the silent connection was given up


async def test_apns_late_answer_after_timeout_does_not_hurt_the_connection(
    open_apns: OpenApns, fake_apns: FakeApns
) -> None:
    # A slow answer arriving after the caller gave up must not tear down the connection (aioapns
    # would raise InvalidStateError in data_received had its wait been cancelled).
    provider: ApnsProvider = await open_apns(request_timeout_s=5)
    fake_apns.script(apns_token(1), ApnsReply(delay_s=0.3))
    with trio.move_on_after(0.1):
        await provider.send(apns_push(1))  # the trio caller is cancelled; the push stays in flight
    await trio.sleep(0.4)
    assert (await provider.send(apns_push(2))).outcome is Outcome.DELIVERED
    assert {record.connection for record in fake_apns.requests} == {0}


async def test_apns_connection_state_is_released_per_push(
    bridge: AsyncioBridge, apns: ApnsProvider, fake_apns: FakeApns
) -> None:
    # aioapns keeps a stream -> push entry for every successful push for the connection's life.
    fake_apns.script(
        apns_token(1),
        ApnsReply.error(400, "BadTopic"),
        ApnsReply.error(429, "TooManyRequests", retry_after="1"),
    )
    for i in range(100):
        await apns.send(apns_push(i % 3))

    async def leftovers() -> list[int]:
        pool = apns._pools["production"]
        return [
            len(c.request_streams) + len(c.requests) + len(c.request_statuses) + len(pool.retry_after)
            for c in pool.connections
        ]

    assert await bridge.run(leftovers) == [0]


async def test_apns_200_concurrent_pushes_over_pooled_connections(
    apns: ApnsProvider, fake_apns: FakeApns
) -> None:
    outcomes: list[PushOutcome] = []

    async def one(i: int) -> None:
        outcomes.append(await apns.send(apns_push(i)))

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert [outcome.outcome for outcome in outcomes] == [Outcome.DELIVERED] * 200
    assert {record.token for record in fake_apns.requests} == {apns_token(i) for i in range(200)}
    assert 1 <= len(fake_apns.connections) <= 10
    assert len(fake_apns.jwts()) == 1


async def test_apns_many_error_answers_on_one_connection(apns: ApnsProvider, fake_apns: FakeApns) -> None:
    # ~50 bytes per 410 body: 1,500 of them exceed the 64 KiB HTTP/2 window a client must give back.
    tokens = range(1000, 2500)
    for i in tokens:
        fake_apns.script(apns_token(i), ApnsReply.error(410, "Unregistered"))
    outcomes: list[Outcome] = []

    async def batch(start: int) -> None:
        for i in range(start, start + 150):
            outcomes.append((await apns.send(apns_push(i))).outcome)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for start in range(tokens.start, tokens.stop, 150):
                nursery.start_soon(batch, start)
    assert outcomes == [Outcome.TOKEN_DEAD] * len(tokens)
    assert {record.connection for record in fake_apns.requests} == {0}


async def test_apns_on_the_trio_asyncio_bridge(
    fake_apns: FakeApns, client_context: ssl.SSLContext, apns_key_pem: str
) -> None:
    endpoint = ApnsEndpoint("127.0.0.1", fake_apns.port)
    config = ApnsConfig(
        KEY_ID,
        TEAM_ID,
        TOPIC,
        key_pem=apns_key_pem,
        production=endpoint,
        sandbox=endpoint,
        max_connection_attempts=1,
    )
    async with open_asyncio_bridge("trio_asyncio") as bridge:
        provider = await ApnsProvider.open(bridge, config, ssl_context=client_context)
        try:
            assert (await provider.send(apns_push(1))).outcome is Outcome.DELIVERED
            fake_apns.script(apns_token(2), ApnsReply(action="reset"))
            assert (await provider.send(apns_push(2))).outcome is Outcome.RETRY
            assert (await provider.send(apns_push(3))).outcome is Outcome.DELIVERED
        finally:
            await provider.aclose()


# -------------------------------------------------------------------------------------------------
# FCM


@pytest.fixture
async def fake_fcm(sa_key: rsa.RSAPrivateKey) -> AsyncIterator[FakeFcm]:
    async with open_fake_fcm(PROJECT, SA_EMAIL, sa_key.public_key()) as fake:
        yield fake


def service_account(sa_key: rsa.RSAPrivateKey, token_uri: str) -> dict[str, str]:
    pem = sa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": SA_EMAIL,
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }


@asynccontextmanager
async def fcm_provider(
    fake: FakeFcm, sa_key: rsa.RSAPrivateKey, **settings: Any
) -> AsyncIterator[FcmProvider]:
    settings = {"endpoint_base": fake.endpoint_base} | settings
    provider = FcmProvider(FcmConfig(service_account=service_account(sa_key, fake.token_uri), **settings))
    try:
        yield provider
    finally:
        await provider.aclose()


@pytest.fixture
async def fcm(fake_fcm: FakeFcm, sa_key: rsa.RSAPrivateKey) -> AsyncIterator[FcmProvider]:
    async with fcm_provider(fake_fcm, sa_key) as provider:
        yield provider


async def test_fcm_delivers_the_message_as_rendered(fcm: FcmProvider, fake_fcm: FakeFcm) -> None:
    request = fcm_push(1)
    assert await fcm.send(request) == PushOutcome(Outcome.DELIVERED, status=200)
    (record,) = fake_fcm.messages
    assert record.path == f"/v1/projects/{PROJECT}/messages:send"
    assert dict(record.message) == {**request.body, "token": fcm_token(1)}
    assert record.message["android"] == {"collapse_key": "inbox", "ttl": "3600s", "priority": "high"}
    assert record.body["validate_only"] is False
    assert record.authorization == "Bearer ya29.fake-1"
    (grant,) = fake_fcm.token_requests
    assert grant.claims is not None and grant.claims["iss"] == SA_EMAIL


async def test_fcm_visible_alert_message(fcm: FcmProvider, fake_fcm: FakeFcm) -> None:
    request = fcm_push(2, payloads.PayloadOptions(visible_alert=True))
    assert (await fcm.send(request)).outcome is Outcome.DELIVERED
    (record,) = fake_fcm.messages
    assert dict(record.message) == {**request.body, "token": fcm_token(2)}
    assert "notification" not in record.message  # the alert lives in android.notification, text-free
    assert record.message["android"]["notification"] == {"title_loc_key": "NEW_MESSAGE", "tag": "inbox"}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (FcmReply.unregistered(), PushOutcome(Outcome.TOKEN_DEAD, "UNREGISTERED", None, 404)),
        (FcmReply.invalid_token(), PushOutcome(Outcome.TOKEN_INVALID, "INVALID_ARGUMENT", None, 400)),
        (
            FcmReply.invalid_argument("message.token", "Invalid registration token"),
            PushOutcome(Outcome.TOKEN_INVALID, "INVALID_ARGUMENT", None, 400),
        ),
        (
            FcmReply.invalid_argument("message.android.ttl", "Invalid value at 'message.android.ttl'"),
            PushOutcome(Outcome.REJECTED, "INVALID_ARGUMENT", None, 400),
        ),
        (FcmReply.quota_exceeded(retry_after="30"), PushOutcome(Outcome.RETRY, "QUOTA_EXCEEDED", 30.0, 429)),
        (FcmReply.internal(), PushOutcome(Outcome.RETRY, "INTERNAL", None, 500)),
        (FcmReply.unavailable(), PushOutcome(Outcome.RETRY, "UNAVAILABLE", None, 503)),
        (FcmReply.unavailable(retry_after="5"), PushOutcome(Outcome.RETRY, "UNAVAILABLE", 5.0, 503)),
        (
            FcmReply.sender_id_mismatch(),
            PushOutcome(Outcome.TOKEN_INVALID, "SENDER_ID_MISMATCH", None, 403),
        ),
    ],
    ids=lambda value: f"{value.status}-{value.error_code}" if isinstance(value, FcmReply) else "",
)
async def test_fcm_answers_become_outcomes(
    fcm: FcmProvider, fake_fcm: FakeFcm, reply: FcmReply, expected: PushOutcome
) -> None:
    fake_fcm.script(fcm_token(3), reply)
    started = trio.current_time()
    assert await fcm.send(fcm_push(3)) == expected
    # One request, answered at once: neither pyfcm's Retry-After sleep nor urllib3's 503 retries.
    assert len(fake_fcm.messages) == 1
    assert trio.current_time() - started < 2
    assert (await fcm.send(fcm_push(3))).outcome is Outcome.DELIVERED


async def test_fcm_bare_404_is_not_a_dead_token(fake_fcm: FakeFcm, sa_key: rsa.RSAPrivateKey) -> None:
    # A wrong endpoint answers 404 too (pyfcm calls every 404 "not registered"): no token is deleted.
    async with fcm_provider(fake_fcm, sa_key, endpoint_base=f"{fake_fcm.base_url}/v2/nowhere") as provider:
        outcome = await provider.send(fcm_push(1))
    assert outcome.outcome is Outcome.REJECTED and outcome.status == 404


async def test_fcm_one_access_token_for_many_pushes_across_threads(
    fcm: FcmProvider, fake_fcm: FakeFcm
) -> None:
    outcomes: list[Outcome] = []

    async def one(i: int) -> None:
        outcomes.append((await fcm.send(fcm_push(i))).outcome)

    async with trio.open_nursery() as nursery:
        for i in range(60):
            nursery.start_soon(one, i)
    for i in range(60, 80):
        await one(i)
    assert outcomes == [Outcome.DELIVERED] * 80
    assert len(fake_fcm.token_requests) == 1
    assert fcm.tokens_fetched == 1
    assert {record.authorization for record in fake_fcm.messages} == {"Bearer ya29.fake-1"}
    # Keep-alive: a connection per worker thread (8 at a time; trio may hand the work to a few more
    # cached threads over the test), plus the token request's own session; not one per push.
    assert fake_fcm.connections < 20


async def test_fcm_rejected_token_is_fetched_again(fcm: FcmProvider, fake_fcm: FakeFcm) -> None:
    assert (await fcm.send(fcm_push(1))).outcome is Outcome.DELIVERED
    fake_fcm.revoke_tokens()
    outcome = await fcm.send(fcm_push(2))
    assert outcome == PushOutcome(Outcome.RETRY, "UNAUTHENTICATED", None, 401)
    assert (await fcm.send(fcm_push(2))).outcome is Outcome.DELIVERED
    assert len(fake_fcm.token_requests) == 2
    assert fake_fcm.messages[-1].authorization == "Bearer ya29.fake-2"


async def test_fcm_connection_failures_are_retry(fake_fcm: FakeFcm, sa_key: rsa.RSAPrivateKey) -> None:
    fake_fcm.script(fcm_token(1), FcmReply(action="close"))
    async with fcm_provider(fake_fcm, sa_key) as provider:
        assert await provider.send(fcm_push(1)) == PushOutcome(Outcome.RETRY, "ConnectionError")
        assert (await provider.send(fcm_push(1))).outcome is Outcome.DELIVERED
    # Nothing listens there.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    nowhere = f"http://127.0.0.1:{closed_port}/v1/projects"
    async with fcm_provider(fake_fcm, sa_key, endpoint_base=nowhere) as provider:
        assert await provider.send(fcm_push(2)) == PushOutcome(Outcome.RETRY, "ConnectionError")


async def test_fcm_oauth_refusal_is_rejected(fake_fcm: FakeFcm, sa_key: rsa.RSAPrivateKey) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with fcm_provider(fake_fcm, other_key) as provider:  # signed by a key the fake does not know
        assert await provider.send(fcm_push(1)) == PushOutcome(Outcome.REJECTED, "OAuthRefused")
    assert fake_fcm.messages == []
    assert fake_fcm.token_requests[0].claims is None


async def test_fcm_messages_pyfcm_cannot_send_are_rejected_locally(
    fcm: FcmProvider, fake_fcm: FakeFcm
) -> None:
    odd = PushRequest(1, "fcm", fcm_token(1), "production", 1, body={"topic": "everyone", "data": {"a": "b"}})
    assert await fcm.send(odd) == PushOutcome(Outcome.REJECTED, "InvalidRequest")
    assert fake_fcm.messages == []


def test_fcm_config_errors(tmp_path: Any, sa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ProviderConfigError):
        FcmConfig()
    with pytest.raises(ProviderConfigError):
        FcmProvider(FcmConfig(service_account_file=str(tmp_path / "missing.json")))
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(service_account(sa_key, "http://127.0.0.1:9/token")))
    provider = FcmProvider(
        FcmConfig(service_account_file=str(path), endpoint_base="http://127.0.0.1:9/v1/projects")
    )
    assert provider.endpoint == f"http://127.0.0.1:9/v1/projects/{PROJECT}/messages:send"
    with pytest.raises(ProviderConfigError):
        FcmProvider(FcmConfig(service_account={"type": "service_account"}))
