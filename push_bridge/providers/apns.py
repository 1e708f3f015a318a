"""APNs: HTTP/2 with token (.p8) authentication, through aioapns on the asyncio bridge.

aioapns is asyncio-only, so every call crosses `pingpull.aio` (``bridge.run``) and its connection
pools, which capture the running loop when built, are built inside ``bridge.run``. The rest of this
module is about aioapns 4.0 behaviours that a push bridge cannot live with, each worked around
here with a subclass rather than a patch of the library's globals:

* Host and port come from the protocol class (``APNS_SERVER``/``APNS_PORT``), so each environment
  gets a small subclass of its own: Apple's production and sandbox hosts, a staging host, a proxy
  target or the test fake are configuration.
* One provider JWT for everything. aioapns' key pool builds a new JWT provider per *connection*
  and closes connections after 10 s idle, so a quiet bridge would mint a token for nearly every
  push; Apple answers 429 ``TooManyProviderTokenUpdates`` when a token is replaced sooner than
  20 minutes after the previous one (tokens are valid for 60). Here one `ProviderToken` signs for
  every connection of both environments and is refreshed every 30 minutes.
* The answer keeps its ``Retry-After`` (aioapns drops response headers), the per-stream state of a
  successful push is released when its stream ends (aioapns keeps it for the connection's life, a
  leak on a busy connection), a stream that ends without a usable answer (no ``apns-id``, a body
  that is not JSON) resolves by its status instead of hanging or raising inside ``data_received``
  (which would drop the connection and every push on it), and error bodies are acknowledged for
  HTTP/2 flow control (aioapns never does, so a long-lived connection stops receiving error
  bodies after 64 KiB of them and the pushes waiting for them time out).
* A timeout never cancels aioapns' own wait: it resolves its futures without checking whether they
  were cancelled, so a late answer to a cancelled push raises inside ``data_received`` and tears
  the connection down with every push in flight on it. The library call runs as its own task; on
  timeout we stop waiting (and close that environment's connections, which may be dead without a
  FIN) but let it finish.

Outcomes follow Apple's "Handling notification responses from APNs": 410 (``Unregistered``,
``ExpiredToken``) means the token is dead; ``BadDeviceToken``, ``DeviceTokenNotForTopic`` and
``MissingDeviceToken`` mean it is invalid *for the topic and environment we sent to*, which a wrong
topic or sandbox/production mix-up on our side also produces (TOKEN_INVALID: the worker removes the
token only once this provider is known to work, docs/decisions/0002-*.md); 429, 5xx,
``IdleTimeout`` and ``ExpiredProviderToken`` are worth retrying;
anything else (``BadTopic``, ``PayloadTooLarge``, ``InvalidProviderToken``...) is a permanent
refusal that is not the token's fault. Failures to connect or a connection lost mid-push are
retried once on a fresh connection inside aioapns (``max_connection_attempts``, default 2: a
duplicate content-free, collapsible wake-up is harmless), then reported as RETRY.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, cast

import jwt
import trio
from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
)
from aioapns.exceptions import MaxAttemptsExceeded
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pingpull.aio import AsyncioBridge
from pingpull.errors import BridgeError
from push_bridge.errors import ProviderConfigError
from push_bridge.providers.base import Outcome, PushOutcome, PushProvider, PushRequest, parse_retry_after

__all__ = [
    "PRODUCTION_HOST",
    "SANDBOX_HOST",
    "ApnsConfig",
    "ApnsEndpoint",
    "ApnsProvider",
    "ProviderToken",
    "outcome_for",
    "parse_retry_after",
]

log = logging.getLogger("pingpull.push.apns")

PRODUCTION_HOST: Final = "api.push.apple.com"
SANDBOX_HOST: Final = "api.sandbox.push.apple.com"
APNS_PORT: Final = 443
# Apple: refresh the provider token no more than once every 20 minutes and at least once every 60.
TOKEN_REFRESH_S: Final = 30 * 60
MIN_TOKEN_REFRESH_S: Final = 20 * 60

# 410: Apple says the token is no longer valid for the topic; nothing on our side can cause it.
_TOKEN_DEAD: Final = frozenset({"Unregistered", "ExpiredToken"})
# 400 about the token: a bad token, or a token of another app (topic) or environment than ours,
# which is also what a misconfigured topic or host answers for every token (TOKEN_INVALID).
_TOKEN_INVALID: Final = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "MissingDeviceToken"})
_RETRYABLE: Final = frozenset(
    {
        "TooManyRequests",
        "TooManyProviderTokenUpdates",
        "InternalServerError",
        "ServiceUnavailable",
        "Shutdown",
        "IdleTimeout",
        "ExpiredProviderToken",
    }
)
_HEADERS: Final = frozenset(
    {"apns-push-type", "apns-priority", "apns-collapse-id", "apns-expiration", "apns-topic", "apns-id"}
)


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True, slots=True)
class ApnsEndpoint:
    host: str
    port: int = APNS_PORT

    @classmethod
    def parse(cls, value: str, default: ApnsEndpoint) -> ApnsEndpoint:
        """``"host"``, ``"host:port"`` or ``"[v6]:port"``; empty means ``default``."""
        value = value.strip()
        if not value:
            return default
        host, port_text = value, ""
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif value.count(":") == 1:
            host, _, port_text = value.partition(":")
        try:
            return cls(host, int(port_text) if port_text else APNS_PORT)
        except ValueError as exc:
            raise ProviderConfigError(f"bad APNs endpoint {value!r}: expected host[:port]") from exc

    def __post_init__(self) -> None:
        if not self.host or not 0 < self.port < 65536:
            raise ProviderConfigError(f"bad APNs endpoint {self.host!r}:{self.port}")


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    """Token authentication: the .p8 key (PEM text or a file), its key id, the team id, the topic."""

    key_id: str
    team_id: str
    topic: str
    key_pem: str = field(default="", repr=False)
    key_file: str = ""
    production: ApnsEndpoint = ApnsEndpoint(PRODUCTION_HOST)
    sandbox: ApnsEndpoint = ApnsEndpoint(SANDBOX_HOST)
    proxy: ApnsEndpoint | None = None  # an HTTP CONNECT proxy, if APNs is only reachable through one
    max_connections: int = 10  # per environment; each carries up to the server's stream limit (1000)
    max_connection_attempts: int = 2
    request_timeout_s: float = 10.0
    # Apple asks providers to keep connections open rather than reconnect per push (aioapns: 10 s).
    idle_timeout_s: float = 300.0
    token_refresh_s: float = TOKEN_REFRESH_S

    def __post_init__(self) -> None:
        if not (self.key_id and self.team_id and self.topic):
            raise ProviderConfigError("APNs needs key_id, team_id and topic")
        if bool(self.key_pem) == bool(self.key_file):
            raise ProviderConfigError("APNs needs exactly one of key_pem and key_file")
        if not 1 <= self.max_connections <= 1000 or not 1 <= self.max_connection_attempts <= 10:
            raise ProviderConfigError("APNs max_connections within 1..1000, attempts within 1..10")
        if not (0 < self.request_timeout_s <= 300 and 0 < self.idle_timeout_s <= 86_400):
            raise ProviderConfigError("APNs request_timeout_s within (0, 300], idle_timeout_s (0, 86400]")
        if not MIN_TOKEN_REFRESH_S <= self.token_refresh_s <= 3600:
            raise ProviderConfigError("APNs token_refresh_s must be within 20..60 minutes (Apple's rule)")


def default_ssl_context() -> ssl.SSLContext:
    """System trust, ALPN h2 (aioapns' own default offers no ALPN at all)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2"])
    return context


# --------------------------------------------------------------------------------------------------
# the provider token


class ProviderToken(AuthorizationHeaderProvider):
    """One ES256 provider JWT, shared by every connection of both environments.

    Used only on the bridge's loop (aioapns asks for the header as it writes each request)."""

    def __init__(
        self,
        key_pem: str,
        key_id: str,
        team_id: str,
        *,
        refresh_after_s: float = TOKEN_REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            key = load_pem_private_key(key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ProviderConfigError("the APNs key is not a PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ProviderConfigError("the APNs key must be a P-256 (ES256) key, as Apple's .p8 files are")
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._refresh_after_s = refresh_after_s
        self._clock = clock
        self._header = ""
        self._issued_at = 0
        self.minted = 0

    def get_header(self) -> str:
        now = self._clock()
        if not self._header or now - self._issued_at >= self._refresh_after_s:
            self._issued_at = int(now)
            token = jwt.encode(
                {"iss": self._team_id, "iat": self._issued_at},
                self._key,
                algorithm="ES256",
                headers={"kid": self._key_id},
            )
            self._header = f"bearer {token}"
            self.minted += 1
        return self._header

    def expire_if_refreshable(self) -> bool:
        """Drop the token if replacing it now cannot trip ``TooManyProviderTokenUpdates``."""
        if self._header and self._clock() - self._issued_at >= MIN_TOKEN_REFRESH_S:
            self._header = ""
            return True
        return False


# --------------------------------------------------------------------------------------------------
# outcomes (pure)


def outcome_for(status: int, reason: str, retry_after: str | None = None) -> PushOutcome:
    """Translate one APNs answer (``:status``, the body's ``reason``, ``Retry-After``)."""
    if status == 200:
        return PushOutcome(Outcome.DELIVERED, status=status)
    if status == 410 or reason in _TOKEN_DEAD:
        return PushOutcome(Outcome.TOKEN_DEAD, reason=reason, status=status)
    if reason in _TOKEN_INVALID:
        return PushOutcome(Outcome.TOKEN_INVALID, reason=reason, status=status)
    if status == 429 or status >= 500 or reason in _RETRYABLE:
        return PushOutcome(
            Outcome.RETRY, reason=reason, status=status, retry_after_s=parse_retry_after(retry_after)
        )
    return PushOutcome(Outcome.REJECTED, reason=reason or f"HTTP {status}", status=status)


def _failure(reason: str) -> PushOutcome:
    return PushOutcome(Outcome.RETRY, reason=reason)


# --------------------------------------------------------------------------------------------------
# aioapns, adapted (everything below runs on the bridge's asyncio loop)


class _Notification(NotificationRequest):
    """A `NotificationRequest` carrying the absolute ``apns-expiration`` payloads rendered.

    aioapns only takes a relative TTL and adds the clock to it when it writes the headers, after
    waiting for a connection; reading the TTL from this property at that moment makes the header
    the exact value (``0``, "deliver now or never", included)."""

    __slots__ = ("expires_at",)

    def __init__(self, *, expires_at: int | None, **kwargs: Any) -> None:
        self.expires_at = expires_at
        super().__init__(**kwargs)

    @property
    def time_to_live(self) -> int | None:
        if self.expires_at is None:
            return None
        return self.expires_at - int(time.time())

    @time_to_live.setter
    def time_to_live(self, _value: int | None) -> None:
        """aioapns' constructor assigns None here; the absolute time is the truth."""


def build_notification(request: PushRequest) -> _Notification:
    """Map a rendered `PushRequest` onto aioapns' request; ValueError for what aioapns cannot send."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    unsupported = sorted(set(headers) - _HEADERS)
    if unsupported:
        raise ValueError(f"unsupported APNs headers {unsupported}")
    push_type = headers.get("apns-push-type")
    priority = headers.get("apns-priority")
    expiration = headers.get("apns-expiration")
    return _Notification(
        expires_at=int(expiration) if expiration is not None else None,
        device_token=request.token,
        message=request.body,
        notification_id=headers.get("apns-id"),
        priority=int(priority) if priority is not None else None,
        collapse_key=headers.get("apns-collapse-id"),
        push_type=PushType(push_type) if push_type is not None else None,
        apns_topic=headers.get("apns-topic"),
    )


class _Protocol(APNsTLSClientProtocol):
    """aioapns' HTTP/2 protocol plus the bookkeeping fixes listed in the module docstring.

    `_protocol_class` derives one subclass per endpoint, setting ``APNS_SERVER``/``APNS_PORT``
    (where aioapns connects and what it sends as ``host``) and ``INACTIVITY_TIME``."""

    def __init__(
        self,
        apns_topic: str,
        loop: asyncio.AbstractEventLoop,
        on_connection_lost: Callable[[APNsBaseClientProtocol], None],
        auth_provider: AuthorizationHeaderProvider,
        retry_after: dict[str, str],
    ) -> None:
        super().__init__(apns_topic, loop, on_connection_lost, auth_provider)  # type: ignore[arg-type]
        self._retry_after = retry_after

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        value = headers.get(b"retry-after")
        if value is not None:
            notification_id = headers.get(b"apns-id", b"").decode("utf8")
            self._retry_after[notification_id] = value.decode("latin-1")
        super().on_response_received(headers)

    def on_data_received(self, raw_data: bytes, stream_id: int) -> None:
        # Give the window back (APNs does not pad, so the data length is the flow-controlled length).
        self.conn.acknowledge_received_data(len(raw_data), stream_id)
        if not raw_data:
            return
        try:
            super().on_data_received(raw_data, stream_id)
        except (ValueError, AttributeError):
            # Not APNs' one-frame JSON (a proxy's error page, say). Raising here would make asyncio
            # drop the connection and every push on it; `on_stream_ended` answers by status instead.
            log.warning("APNs answer body is not a JSON reason: %r", raw_data[:200])

    def on_stream_ended(self, stream_id: int) -> None:
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is not None:
            # Normally already answered (200 on its headers, an error on its body). If not, the
            # server ended the stream without a usable answer: resolve rather than hang.
            status = self.request_statuses.pop(notification_id, "")
            future = self.requests.pop(notification_id, None)
            if future is not None and not future.done():
                future.set_result(NotificationResult(notification_id, status or "0", description=""))
        super().on_stream_ended(stream_id)


def _protocol_class(endpoint: ApnsEndpoint, idle_timeout_s: float) -> type[_Protocol]:
    attributes = {"APNS_SERVER": endpoint.host, "APNS_PORT": endpoint.port, "INACTIVITY_TIME": idle_timeout_s}
    return cast(
        type[_Protocol], type(f"ApnsProtocol[{endpoint.host}:{endpoint.port}]", (_Protocol,), attributes)
    )


class _Pool(APNsKeyConnectionPool):
    """aioapns' key pool, but its connections share one `ProviderToken` and go to ``endpoint``."""

    def __init__(
        self,
        config: ApnsConfig,
        endpoint: ApnsEndpoint,
        token: ProviderToken,
        ssl_context: ssl.SSLContext,
    ) -> None:
        super().__init__(
            key="",  # unused: the shared token signs
            key_id=config.key_id,
            team_id=config.team_id,
            topic=config.topic,
            max_connections=config.max_connections,
            max_connection_attempts=config.max_connection_attempts,
            ssl_context=ssl_context,
            proxy_host=config.proxy.host if config.proxy else None,
            proxy_port=config.proxy.port if config.proxy else None,
        )
        self._protocol = _protocol_class(endpoint, config.idle_timeout_s)
        self.protocol_class = self._protocol  # aioapns connects to its APNS_SERVER:APNS_PORT
        self._topic = config.topic
        self.token = token
        self.retry_after: dict[str, str] = {}  # apns-id -> Retry-After, until the push's result is read

    async def create_connection(self) -> APNsBaseClientProtocol:
        factory = partial(
            self._protocol, self._topic, self.loop, self.discard_connection, self.token, self.retry_after
        )
        if self.proxy_host and self.proxy_port:
            return await self._create_proxy_connection(factory)
        connection: APNsBaseClientProtocol = await self._create_connection(factory)
        return connection


async def _open_pools(
    config: ApnsConfig, token: ProviderToken, ssl_context: ssl.SSLContext
) -> dict[str, _Pool]:
    return {
        "production": _Pool(config, config.production, token, ssl_context),
        "sandbox": _Pool(config, config.sandbox, token, ssl_context),
    }


async def _close_pools(pools: dict[str, _Pool]) -> None:
    for pool in pools.values():
        pool.close()


async def _push(pool: _Pool, notification: _Notification) -> tuple[NotificationResult, str | None]:
    try:
        result = await pool.send_notification(notification)
        return result, pool.retry_after.get(notification.notification_id)
    finally:
        pool.retry_after.pop(notification.notification_id, None)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Read an abandoned push's exception so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def _send_on_loop(pool: _Pool, notification: _Notification, timeout_s: float) -> PushOutcome:
    task = asyncio.ensure_future(_push(pool, notification))
    task.add_done_callback(_retrieve)
    try:
        result, retry_after = await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        # No answer in time: the connection may be dead without a FIN (aioapns sends no PINGs), so
        # close this environment's connections; the next push reconnects.
        pool.close()
        return _failure("Timeout")
    except MaxAttemptsExceeded:
        return _failure("ConnectionFailed")
    except Exception as exc:  # h2, ssl, OSError...: whatever the library let through
        log.warning("APNs send failed: %r", exc)
        return _failure(type(exc).__name__)
    status = int(result.status) if result.status.isdigit() else 0
    reason = result.description or ""
    if reason == "ExpiredProviderToken" and pool.token.expire_if_refreshable():
        log.warning("APNs said ExpiredProviderToken: a new provider token will be minted")
    return outcome_for(status, reason, retry_after)


# --------------------------------------------------------------------------------------------------


class ApnsProvider(PushProvider):
    """Open with `ApnsProvider.open`; `aclose` closes the connections."""

    name = "apns"

    def __init__(
        self, bridge: AsyncioBridge, config: ApnsConfig, token: ProviderToken, pools: dict[str, _Pool]
    ) -> None:
        self._bridge = bridge
        self._config = config
        self._token = token
        self._pools = pools
        self._closed = False

    @classmethod
    async def open(
        cls, bridge: AsyncioBridge, config: ApnsConfig, *, ssl_context: ssl.SSLContext | None = None
    ) -> ApnsProvider:
        """Load and check the key, build one pool per environment (connections open lazily).

        ``ssl_context`` replaces `default_ssl_context` (tests trust their CA with it; give it ALPN h2).
        Raises `ProviderConfigError` for unusable credentials."""
        key_pem = config.key_pem
        if config.key_file:
            try:
                key_pem = await trio.Path(config.key_file).read_text()
            except OSError as exc:
                raise ProviderConfigError(f"cannot read the APNs key file: {exc}") from exc
        token = ProviderToken(key_pem, config.key_id, config.team_id, refresh_after_s=config.token_refresh_s)
        context = ssl_context if ssl_context is not None else default_ssl_context()
        pools = await bridge.run(_open_pools, config, token, context)
        return cls(bridge, config, token, pools)

    @property
    def tokens_minted(self) -> int:
        """Provider JWTs signed so far (one per refresh period, whatever the connection count)."""
        return self._token.minted

    async def send(self, request: PushRequest) -> PushOutcome:
        pool = self._pools.get(request.environment)
        if pool is None:
            log.warning("APNs environment %r is neither production nor sandbox", request.environment)
            return PushOutcome(Outcome.REJECTED, reason="UnknownEnvironment")
        if self._closed:
            return _failure("ProviderClosed")
        try:
            notification = build_notification(request)
        except ValueError as exc:
            log.warning("APNs request not sendable: %s", exc)
            return PushOutcome(Outcome.REJECTED, reason="InvalidRequest")
        try:
            return await self._bridge.run(_send_on_loop, pool, notification, self._config.request_timeout_s)
        except BridgeError:
            return _failure("BridgeClosed")
        except Exception as exc:
            log.exception("APNs send failed on the bridge")
            return _failure(type(exc).__name__)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with suppress(BridgeError):  # the loop is gone, and its connections with it
            await self._bridge.run(_close_pools, self._pools)
