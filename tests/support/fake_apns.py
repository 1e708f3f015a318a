"""A fake APNs that speaks Apple's provider API: HTTP/2 over TLS (ALPN h2) on loopback.

The APNs provider is tested against the real wire protocol, never against a mocked aioapns call:
this server is written with the sans-IO `h2` library on raw trio sockets and a `trio.SSLStream`
whose certificate comes from a test CA (trustme), and it answers the way Apple documents
("Handling notification responses from APNs"):

* ``POST /3/device/<token>``: ``:status 200`` with an ``apns-id`` header and no body;
* an error: the status, the ``apns-id`` header and ONE DATA frame carrying ``{"reason": "..."}``
  (plus ``"timestamp"`` in ms for 410) with END_STREAM on it;
* token authentication: the ``authorization: bearer <ES256 JWT>`` header is checked against the
  provider keys given to the fake (403 ``MissingProviderToken`` / ``InvalidProviderToken``), and
  switching to a new JWT sooner than ``min_token_refresh_s`` after the previous switch is answered
  429 ``TooManyProviderTokenUpdates``, the fake's model of Apple's "refresh at most once every
  20 minutes" rule;
* HTTP/2 flow control is honoured in both directions: request bodies are acknowledged, and an
  error body waits for window space rather than being sent past the client's window.

Answers are scripted per device token (consumed in order, then 200), and every request is
recorded (headers including the JWT, path, body, which connection it came on). The server runs in
the test's trio run; aioapns runs on the bridge's asyncio loop, so both sides are real sockets.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import jwt
import trio

Action = Literal["reply", "close", "reset", "goaway", "hang"]


@dataclass(frozen=True, slots=True)
class ApnsReply:
    """One scripted answer. ``action`` other than "reply" misbehaves instead of answering:
    "close" closes the TLS connection, "reset" aborts it with a TCP RST, "goaway" sends GOAWAY
    and closes, "hang" never answers that stream."""

    status: int = 200
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    action: Action = "reply"
    delay_s: float = 0.0
    timestamp_ms: int | None = None

    @classmethod
    def error(cls, status: int, reason: str, **headers: str) -> ApnsReply:
        """``retry_after="5"`` becomes a ``retry-after: 5`` header."""
        pairs = tuple((name.replace("_", "-"), value) for name, value in headers.items())
        stamp = int(time.time() * 1000) if status == 410 else None
        return cls(status=status, reason=reason, headers=pairs, timestamp_ms=stamp)


OK = ApnsReply()


@dataclass(frozen=True, slots=True)
class ApnsRecord:
    """One request as the fake received it."""

    connection: int
    stream_id: int
    headers: Mapping[str, str]
    body: bytes
    # Wall-clock time (time.time()) the request was complete, comparable with the outbox's *_ms.
    received_at: float = field(default_factory=time.time)

    @property
    def path(self) -> str:
        return self.headers.get(":path", "")

    @property
    def token(self) -> str:
        return self.path.removeprefix("/3/device/")

    @property
    def payload(self) -> Any:
        return json.loads(self.body)

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")


@dataclass
class _Stream:
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Conn:
    """One accepted connection: the h2 state machine, its TLS stream and a send lock."""

    def __init__(self, ident: int, tcp: trio.SocketStream, tls: trio.SSLStream[trio.SocketStream]) -> None:
        self.ident = ident
        self.tcp = tcp
        self.tls = tls
        self.h2: h2.connection.H2Connection | None = None
        self.send_lock = trio.Lock()
        self.streams: dict[int, _Stream] = {}
        self.blocked: dict[int, bytes] = {}  # error bodies waiting for flow-control window
        self.alpn: str | None = None
        self.closed = trio.Event()
        self.cancel_scope = trio.CancelScope()


class FakeApns:
    """Open it with `open_fake_apns`. ``host``/``port`` are where it listens."""

    def __init__(
        self,
        server_context: ssl.SSLContext,
        *,
        provider_keys: Mapping[str, Any] | None = None,
        team_id: str | None = None,
        min_token_refresh_s: float = 20 * 60,
        max_concurrent_streams: int = 1000,
        app_topic: str | None = None,
    ) -> None:
        self.server_context = server_context
        self.provider_keys = dict(provider_keys or {})  # kid -> EC public key; empty: no JWT checks
        self.team_id = team_id
        self.min_token_refresh_s = min_token_refresh_s
        self.max_concurrent_streams = max_concurrent_streams
        # The bundle id every device token belongs to: a push for another topic is answered
        # 400 DeviceTokenNotForTopic, for every token, as Apple does for a misconfigured topic.
        self.app_topic = app_topic
        self.host = "127.0.0.1"
        self.port = 0
        self.requests: list[ApnsRecord] = []
        self.connections: list[_Conn] = []
        self._script: dict[str, deque[ApnsReply]] = {}
        self._current_jwt: dict[str, tuple[str, float]] = {}  # kid -> (token, when it took over)
        self._nursery: trio.Nursery | None = None

    # ---------------------------------------------------------------------------------- scripting

    def script(self, token: str, *replies: ApnsReply) -> None:
        """Answer the next pushes to ``token`` with ``replies`` in order, then 200."""
        self._script.setdefault(token, deque()).extend(replies)

    def clear_script(self) -> None:
        """Forget every reply not yet used: from now on every push is answered 200."""
        self._script.clear()

    def jwts(self) -> list[str]:
        """The distinct provider tokens seen, in order of first use."""
        return list(dict.fromkeys(record.authorization for record in self.requests))

    def for_token(self, token: str) -> list[ApnsRecord]:
        return [record for record in self.requests if record.token == token]

    @property
    def open_connections(self) -> list[_Conn]:
        return [conn for conn in self.connections if not conn.closed.is_set()]

    async def drop_connections(self, how: Literal["close", "reset", "goaway"] = "close") -> None:
        """Close every open connection the way an idle-timeout or a load balancer would."""
        for conn in self.open_connections:
            await self._misbehave(conn, how)

    # ---------------------------------------------------------------------------------- serving

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, self.server_context, server_side=True)
        conn = _Conn(len(self.connections), tcp, tls)
        self.connections.append(conn)
        try:
            with conn.cancel_scope:
                await tls.do_handshake()
                conn.alpn = tls.selected_alpn_protocol()
                await self._run(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass  # the client went away, or we made it go away
        finally:
            conn.closed.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(tcp)

    async def _run(self, conn: _Conn) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        h2conn = h2.connection.H2Connection(config=config)
        h2conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams},
        )
        conn.h2 = h2conn
        h2conn.initiate_connection()
        await self._flush(conn)
        while True:
            data = await conn.tls.receive_some(65536)
            if not data:
                return
            try:
                events = h2conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                await self._flush(conn)  # the GOAWAY h2 prepared
                return
            for event in events:
                await self._on_event(conn, event)
            await self._flush(conn)

    async def _on_event(self, conn: _Conn, event: h2.events.Event) -> None:
        assert conn.h2 is not None
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            stream = conn.streams.setdefault(event.stream_id, _Stream())
            # header_encoding="utf-8" makes these str pairs; duplicates would be "DuplicateHeaders".
            stream.headers.update((str(name), str(value)) for name, value in event.headers)
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            conn.streams.setdefault(event.stream_id, _Stream()).body += event.data
            conn.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            stream = conn.streams.pop(event.stream_id, _Stream())
            record = ApnsRecord(conn.ident, event.stream_id, dict(stream.headers), bytes(stream.body))
            self.requests.append(record)
            reply = self._decide(record)
            if reply.action != "reply":
                await self._misbehave(conn, reply.action)
            elif reply.delay_s:
                assert self._nursery is not None
                self._nursery.start_soon(self._reply_later, conn, record, reply)
            else:
                self._reply(conn, record, reply)
        elif isinstance(event, h2.events.WindowUpdated):
            self._send_blocked(conn)
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise trio.BrokenResourceError("client sent GOAWAY")

    # ---------------------------------------------------------------------------------- answers

    def _decide(self, record: ApnsRecord) -> ApnsReply:
        headers = record.headers
        if headers.get(":method") != "POST":
            return ApnsReply.error(405, "MethodNotAllowed")
        if not record.path.startswith("/3/device/"):
            return ApnsReply.error(404, "BadPath")
        if not record.token:
            return ApnsReply.error(400, "MissingDeviceToken")
        auth = self._check_jwt(headers.get("authorization"))
        if auth is not None:
            return auth
        if not headers.get("apns-topic"):
            return ApnsReply.error(400, "MissingTopic")
        if self.app_topic is not None and headers["apns-topic"] != self.app_topic:
            return ApnsReply.error(400, "DeviceTokenNotForTopic")
        if not record.body:
            return ApnsReply.error(400, "PayloadEmpty")
        if len(record.body) > 4096:
            return ApnsReply.error(413, "PayloadTooLarge")
        queue = self._script.get(record.token)
        if queue:
            return queue.popleft()
        return OK

    def _check_jwt(self, authorization: str | None) -> ApnsReply | None:
        if not self.provider_keys:
            return None
        if not authorization or not authorization.lower().startswith("bearer "):
            return ApnsReply.error(403, "MissingProviderToken")
        token = authorization[len("bearer ") :]
        try:
            kid = str(jwt.get_unverified_header(token).get("kid"))
            key = self.provider_keys[kid]
            claims = jwt.decode(token, key, algorithms=["ES256"], options={"require": ["iat", "iss"]})
        except (jwt.PyJWTError, KeyError):
            return ApnsReply.error(403, "InvalidProviderToken")
        if self.team_id is not None and claims["iss"] != self.team_id:
            return ApnsReply.error(403, "InvalidProviderToken")
        if time.time() - claims["iat"] > 3600:
            return ApnsReply.error(403, "ExpiredProviderToken")
        now = time.monotonic()
        current = self._current_jwt.get(kid)
        if current is None or current[0] != token:
            if current is not None and now - current[1] < self.min_token_refresh_s:
                return ApnsReply.error(429, "TooManyProviderTokenUpdates")
            self._current_jwt[kid] = (token, now)
        return None

    async def _reply_later(self, conn: _Conn, record: ApnsRecord, reply: ApnsReply) -> None:
        await trio.sleep(reply.delay_s)
        if conn.closed.is_set():
            return
        self._reply(conn, record, reply)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._flush(conn)

    def _reply(self, conn: _Conn, record: ApnsRecord, reply: ApnsReply) -> None:
        assert conn.h2 is not None
        apns_id = record.headers.get("apns-id") or str(uuid.uuid4()).upper()
        headers = [(":status", str(reply.status)), ("apns-id", apns_id), *reply.headers]
        try:
            if reply.status == 200:
                conn.h2.send_headers(record.stream_id, headers, end_stream=True)
                return
            error: dict[str, Any] = {"reason": reply.reason}
            if reply.timestamp_ms is not None:
                error["timestamp"] = reply.timestamp_ms
            body = json.dumps(error).encode()
            headers.append(("content-type", "application/json; charset=utf-8"))
            conn.h2.send_headers(record.stream_id, headers)
        except h2.exceptions.StreamClosedError:
            return  # the client reset it
        conn.blocked[record.stream_id] = body
        self._send_blocked(conn)

    def _send_blocked(self, conn: _Conn) -> None:
        """Send waiting error bodies as one DATA frame each, once the client's window allows."""
        assert conn.h2 is not None
        for stream_id, body in list(conn.blocked.items()):
            try:
                window = conn.h2.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                del conn.blocked[stream_id]
                continue
            if window >= len(body):
                del conn.blocked[stream_id]
                conn.h2.send_data(stream_id, body, end_stream=True)

    async def _misbehave(self, conn: _Conn, how: Action) -> None:
        if how == "hang":
            return
        if how == "goaway" and conn.h2 is not None:
            conn.h2.close_connection()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._flush(conn)
        if how == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN, like a crashed peer or a middlebox.
            conn.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await trio.aclose_forcefully(conn.tcp)
        else:
            with contextlib.suppress(OSError):
                conn.tcp.socket.shutdown(socket.SHUT_RDWR)  # FIN, no close_notify: an abrupt close
        conn.cancel_scope.cancel()

    async def _flush(self, conn: _Conn) -> None:
        assert conn.h2 is not None
        async with conn.send_lock:
            data = conn.h2.data_to_send()
            if data:
                await conn.tls.send_all(data)


@asynccontextmanager
async def open_fake_apns(server_context: ssl.SSLContext, **options: Any) -> AsyncIterator[FakeApns]:
    """Serve a `FakeApns` on a free loopback port for the duration of the block."""
    fake = FakeApns(server_context, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
