"""Keeping a device in sync: listen for signals, pull the inbox from the cursor, ack.

`DeviceSync.run()` is what an app's background service does, in trio:

- connect to the gateway (WebSocket first; SSE, then long-poll when a transport is *refused*, e.g. a
  proxy that rejects the upgrade), authenticated with the device token;
- on HELLO, and on every NEW whose head is past the cursor, pull `GET /v1/inbox?after=cursor` page
  by page, hand the items to `on_items`, and ack the last seq: the cursor only moves after the app has
  the messages (at-least-once, and idempotent on the server);
- on GOAWAY, reconnect after the hinted delay; on any failure, reconnect with capped exponential
  backoff and full jitter, so a gateway restart does not become a synchronised reconnect storm.

The signal is only a hint: a missed frame costs latency, never a message, because every (re)connect
starts with HELLO and a pull from the cursor.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

from pingpull import wire
from pingpull.client.content import ContentClient
from pingpull.client.errors import ApiError, ClientError, TransportError

log = logging.getLogger("pingpull.client")

TRANSPORTS = ("ws", "sse", "poll")
OnItems = Callable[[list[dict[str, Any]]], Awaitable[None]]


class TransportRefused(ClientError):
    """The gateway (or something in front of it) refused this transport: try the next one."""


class Reconnect(ClientError):
    """The session ended on purpose (GOAWAY, 503 while draining); reconnect after `delay_s`."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"reconnect in {delay_s:.2f}s")
        self.delay_s = delay_s


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's "full jitter")."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.initial_s * 2**self.attempt)
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


_SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https"}


@dataclass
class DeviceSync:
    """One device's sync loop. `signal_url` is the gateway's base URL: http(s)://host:port (ws:// and
    wss:// are accepted and mean the same). One HTTP client serves every SSE and long-poll session
    of `run()` (keep-alive connections are reused across reconnects) and is closed when it returns."""

    content: ContentClient
    signal_url: str  # http://host:port of a gateway
    token: str
    cursor: int = 0
    on_items: OnItems | None = None
    transports: Sequence[str] = TRANSPORTS
    poll_timeout_s: int = 25
    backoff: Backoff = field(default_factory=Backoff)
    # For wss:// / https:// gateways whose certificate the system does not trust (a private CA).
    # Setting it for a plain http:// or ws:// gateway is a mistake and refused at construction.
    ssl_context: ssl.SSLContext | None = None
    # The HTTP transport under SSE and long-poll (tests supply one; None: httpx's default).
    http_transport: httpx.AsyncBaseTransport | None = None
    # Observability for apps and tests: which transport is live, and every frame kind seen.
    transport: str | None = None
    connected: trio.Event = field(default_factory=trio.Event)
    seen_kinds: list[int] = field(default_factory=list)
    _http: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        scheme, sep, rest = self.signal_url.partition("://")
        if not sep or scheme.lower() not in _SCHEMES or not rest.strip("/"):
            raise ClientError(
                f"signal_url must be http(s)://host:port (or ws(s)://), got {self.signal_url!r}"
            )
        self.signal_url = f"{_SCHEMES[scheme.lower()]}://{rest.rstrip('/')}"
        if self.ssl_context is not None and not self.signal_url.startswith("https://"):
            raise ClientError(
                f"ssl_context is set but {self.signal_url!r} is not TLS: use an https:// (or wss://) "
                "gateway URL, or leave ssl_context unset"
            )

    async def run(self) -> None:
        """Keep the device in sync until cancelled."""
        async with httpx.AsyncClient(
            base_url=self.signal_url,
            timeout=httpx.Timeout(10),
            verify=self._verify(),
            transport=self.http_transport,
        ) as http:
            self._http = http
            try:
                await self._run()
            finally:
                self._http = None

    async def _run(self) -> None:
        index = 0
        while True:
            name = self.transports[index]
            try:
                await self._session(name)
                delay = self.backoff.next_delay()
            except TransportRefused as exc:
                log.info("transport %s refused (%s); falling back", name, exc)
                if index + 1 < len(self.transports):
                    index += 1
                    continue
                index = 0
                delay = self.backoff.next_delay()
            except Reconnect as exc:
                delay = exc.delay_s
            except (TransportError, ConnectionClosed, HandshakeError, OSError, httpx.HTTPError) as exc:
                log.info("signal session on %s failed: %r", name, exc)
                delay = self.backoff.next_delay()
            self.transport = None
            self.connected = trio.Event()
            await trio.sleep(delay)

    async def sync(self, head: int | None = None) -> None:
        """Pull everything after the cursor (when `head` says there is something), hand it over, ack."""
        if head is not None and head != wire.UNKNOWN_HEAD and head <= self.cursor:
            return
        new_head, items = await self.content.pull_all(self.cursor)
        if items:
            if self.on_items is not None:
                await self.on_items(items)
            self.cursor = items[-1]["seq"]
            await self.content.ack(self.cursor)
        elif new_head < self.cursor:
            # The server's inbox is behind our cursor (a restored database): follow the server.
            self.cursor = new_head

    def _verify(self) -> ssl.SSLContext | bool:
        return self.ssl_context if self.ssl_context is not None else True

    def _ready(self, transport: str) -> None:
        self.transport = transport
        self.backoff.reset()
        self.connected.set()

    async def _session(self, name: str) -> None:
        if name == "ws":
            await self._websocket()
        elif name == "sse":
            await self._sse()
        elif name == "poll":
            await self._poll()
        else:
            raise ClientError(f"unknown transport {name!r}")

    # --- WebSocket -------------------------------------------------------------------------------

    async def _websocket(self) -> None:
        url = self.signal_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/v1/signal"
        try:
            async with open_websocket_url(
                url,
                extra_headers=[(b"Authorization", f"Bearer {self.token}".encode())],
                connect_timeout=10,
                ssl_context=self.ssl_context,
            ) as ws:
                while True:
                    message = await ws.get_message()
                    if not isinstance(message, bytes):
                        continue
                    await self._on_frame(wire.decode(message), "ws")
        except ConnectionRejected as exc:
            if exc.status_code in (503,):
                raise Reconnect(self.backoff.next_delay()) from exc
            raise TransportRefused(f"HTTP {exc.status_code}") from exc

    async def _on_frame(self, frame: wire.Frame, transport: str) -> None:
        self.seen_kinds.append(frame.kind)
        if frame.kind == wire.Kind.HELLO:
            self._ready(transport)  # connected: the HELLO arrived; the pull below catches up
            await self.sync(frame.head if frame.head != wire.UNKNOWN_HEAD else None)
        elif frame.kind in (wire.Kind.NEW, wire.Kind.RECEIPT):
            await self.sync(frame.head if frame.head != wire.UNKNOWN_HEAD else None)
        elif frame.kind == wire.Kind.GOAWAY:
            raise Reconnect(frame.arg / 10)
        # Unknown kinds are ignored: newer servers may send frames this client does not know.

    # --- SSE ---------------------------------------------------------------------------------------

    async def _sse(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        if self.cursor:
            headers["Last-Event-ID"] = str(self.cursor)
        async with self._client().stream(
            "GET", "/v1/signal/sse", headers=headers, timeout=httpx.Timeout(10, read=None)
        ) as response:
            if response.status_code == 503:
                raise Reconnect(_retry_after(response, self.backoff))
            if response.status_code != 200:
                raise TransportRefused(f"HTTP {response.status_code}")
            event: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line == "":
                    if "event" in event:
                        await self._on_sse_event(event)
                    event = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    event[key] = value.removeprefix(" ")

    async def _on_sse_event(self, event: dict[str, str]) -> None:
        data = json.loads(event.get("data", "{}"))
        head = data.get("head")
        head = wire.UNKNOWN_HEAD if head is None else int(head)
        kind = {
            "hello": wire.Kind.HELLO,
            "new": wire.Kind.NEW,
            "receipt": wire.Kind.RECEIPT,
            "goaway": wire.Kind.GOAWAY,
        }
        name = event["event"]
        if name not in kind:
            return
        arg = int(data.get("retry_ms", 0)) // 100 if name == "goaway" else int(data.get("heartbeat_s", 0))
        await self._on_frame(
            wire.Frame(kind[name], head, int(data.get("ref", 0)), min(arg, wire.MAX_U16)), "sse"
        )

    # --- long-poll ---------------------------------------------------------------------------------

    async def _poll(self) -> None:
        http = self._client()
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = httpx.Timeout(10, read=self.poll_timeout_s + 10)
        self._ready("poll")
        await self.sync()  # no HELLO on this transport: start from the cursor
        while True:
            response = await http.get(
                "/v1/signal/poll",
                params={"after": self.cursor, "timeout": self.poll_timeout_s},
                headers=headers,
                timeout=timeout,
            )
            if response.status_code == 200:
                head = response.json().get("head")
                self.seen_kinds.append(wire.Kind.NEW)
                await self.sync(None if head is None else int(head))
            elif response.status_code == 503:
                raise Reconnect(_retry_after(response, self.backoff))
            elif response.status_code != 204:
                raise TransportRefused(f"HTTP {response.status_code}")

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise ClientError("SSE and long-poll sessions run inside DeviceSync.run()")
        return self._http


def _retry_after(response: httpx.Response, backoff: Backoff) -> float:
    value = response.headers.get("Retry-After", "")
    return float(value) * random.uniform(1.0, 1.5) if value.isdigit() else backoff.next_delay()


__all__ = ["TRANSPORTS", "ApiError", "Backoff", "DeviceSync", "Reconnect", "TransportRefused"]
