"""The gateway: one listener, one task per connection, three transports, draining and admission.

A connection's task reads a request head (h11, bounded in size and time), authenticates it, and
becomes that transport's session. Operations endpoints (/healthz, /readyz, /metrics) answer on the
same port and keep the connection for the next request.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import ssl
from dataclasses import dataclass, field

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from pingpull import logs, wire
from pingpull.bus import Bus, BusError
from pingpull.config import SignalSettings
from pingpull.errors import TokenError
from pingpull.ratelimit import TokenBucketLimiter
from pingpull.tokens import TokenVerifier
from signal_svc import http
from signal_svc.errors import ConnectionGone, HttpRefusal
from signal_svc.http import Route, SignalRequest
from signal_svc.hub import Hub
from signal_svc.link import WOULD_BLOCK, Link, linger, tls_buffered, tls_handshake
from signal_svc.poll import poll_params, serve_poll
from signal_svc.sse import last_event_id, serve_sse
from signal_svc.ws import accept_websocket, serve_websocket

log = logging.getLogger("pingpull.signal")

_ADMISSION_KEY = 0


class GatewayMetrics:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry()
        connections = Gauge(
            "pingpull_signal_connections", "Connections attached to the hub.", registry=self.registry
        )
        connections.set_function(lambda: len(gateway.hub))
        devices = Gauge(
            "pingpull_signal_devices", "Devices with at least one connection.", registry=self.registry
        )
        devices.set_function(lambda: gateway.hub.device_count)
        frames = Gauge(
            "pingpull_signal_frames_delivered",
            "Frames handed to connections since start.",
            registry=self.registry,
        )
        frames.set_function(lambda: gateway.hub.frames_delivered)
        self.sessions = Counter(
            "pingpull_signal_sessions",
            "Sessions started, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.refused = Counter(
            "pingpull_signal_refused",
            "Requests refused before a session, by status.",
            ["status"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "pingpull_signal_dropped",
            "Connections dropped by the gateway, by reason.",
            ["reason"],
            registry=self.registry,
        )


@dataclass
class Gateway:
    settings: SignalSettings
    bus: Bus
    verifier: TokenVerifier
    hub: Hub = field(init=False)
    metrics: GatewayMetrics = field(init=False)
    draining: bool = False
    open_connections: int = 0
    handshakes: TokenBucketLimiter = field(init=False)
    _all_closed: trio.Event = field(init=False, default_factory=trio.Event)
    # Where background work (resyncs) runs; set by run_signal.
    nursery: trio.Nursery | None = None
    # Serve wss:// (and https:// for SSE and polling) when set.
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self.hub = Hub(
            self.bus,
            max_per_device=self.settings.max_connections_per_device,
            max_pending_bytes=self.settings.max_pending_bytes,
        )
        self.metrics = GatewayMetrics(self)
        self.handshakes = TokenBucketLimiter(
            self.settings.handshake_rate_per_s, self.settings.handshake_burst, clock=trio.current_time
        )
        self.bus.on_resync(self.request_resync)

    def request_resync(self) -> None:
        """The bus came back after losing its subscriptions: tell every device to pull."""
        if self.nursery is not None:
            self.nursery.start_soon(self.resync)

    async def resync(self) -> None:
        links = list(self.hub.links())
        users = sorted({link.user_id for link in links})
        try:
            heads = await self.bus.heads(users)
        except BusError as exc:
            logs.event(log, "resync_failed", level=logging.WARNING, error=str(exc))
            heads = {}
        devices: dict[int, int] = {link.device_id: link.user_id for link in links}
        for device_id, user_id in devices.items():
            head = heads.get(user_id)
            self.hub.receive(device_id, wire.encode_new(wire.UNKNOWN_HEAD if head is None else head, 0))
        logs.event(
            log, "resynced", devices=len(devices), unknown_heads=sum(1 for u in users if heads.get(u) is None)
        )

    async def attach_and_read_head(self, link: Link) -> int:
        """Attach `link` holding deliveries in its queue, then read the user's head from the bus.

        Attaching first means no publication can fall between "head read" and "subscribed"; anything
        that arrives meanwhile waits in `link.pending` until the caller has sent its greeting."""
        link.pending = bytearray()
        self.hub.attach(link)
        self.metrics.sessions.labels(link.kind).inc()
        return await self.current_head(link.user_id)

    async def current_head(self, user_id: int) -> int:
        """The user's head as the bus knows it; "unknown" (the client pulls) when it does not, or is down."""
        try:
            head = await self.bus.head(user_id)
        except BusError:
            return wire.UNKNOWN_HEAD
        return wire.UNKNOWN_HEAD if head is None else head

    def admission_refusal(self) -> HttpRefusal | None:
        if self.draining:
            return HttpRefusal(
                503, "draining", "this gateway is restarting", headers=[(b"Retry-After", b"1")]
            )
        if self.open_connections > self.settings.max_connections:
            return HttpRefusal(503, "overloaded", "too many connections", headers=[(b"Retry-After", b"5")])
        return None

    # --- per connection --------------------------------------------------------------------------

    async def handle(self, sock: socket.socket) -> None:
        self.open_connections += 1
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                with trio.move_on_after(self.settings.handshake_timeout_s) as handshake:
                    await tls_handshake(sock)
                if handshake.cancelled_caught:
                    return
            await self._serve_requests(sock)
        except (ConnectionGone, ssl.SSLError):
            pass  # a TLS failure (no shared protocol, bad record, reset mid-handshake) ends only this one
        except HttpRefusal as refusal:
            self.metrics.refused.labels(str(refusal.status)).inc()
            _try_send(sock, http.problem_bytes(refusal))
            await linger(sock)
        finally:
            self.open_connections -= 1
            sock.close()
            if self.draining and self.open_connections == 0:
                self._all_closed.set()

    async def _serve_requests(self, sock: socket.socket) -> None:
        leftover = b""
        while True:
            request, leftover = await self._read_head(sock, leftover)
            if request.route in (Route.HEALTHZ, Route.READYZ, Route.METRICS):
                _send_or_gone(sock, self._ops_answer(request.route))
                continue
            if request.route.value not in self.settings.enabled_transports:
                raise HttpRefusal(404, "not-found", f"the {request.route.value} transport is disabled here")
            refusal = self.admission_refusal()
            if refusal is not None:
                raise refusal
            wait_s = self.handshakes.try_acquire(_ADMISSION_KEY)
            if wait_s > 0:
                retry = b"%d" % max(1, math.ceil(wait_s))
                raise HttpRefusal(
                    503, "overloaded", "too many new connections", headers=[(b"Retry-After", retry)]
                )
            try:
                claims = self.verifier.verify(http.bearer_token(request))
            except TokenError as exc:
                raise HttpRefusal(401, "unauthorized", str(exc)) from exc
            user_id, device_id, route = claims.user_id, claims.device_id, request.route
            # Everything a session needs is taken from the request now, and the request dropped:
            # an idle connection lives for hours, and its parsed head is ~1.5 KB it never reads again.
            if route is Route.WEBSOCKET:
                accept, ws = accept_websocket(request)
                del request, claims
                await serve_websocket(self, sock, accept, ws, user_id, device_id, leftover)
                return
            if route is Route.SSE:
                last_event_id(request)  # validated before anything is sent
                del request, claims
                await serve_sse(self, sock, user_id, device_id)
                return
            after, timeout_s = poll_params(request, self.settings)
            del request, claims
            if not await serve_poll(self, sock, after, timeout_s, user_id, device_id):
                return

    async def _read_head(self, sock: socket.socket, leftover: bytes) -> tuple[SignalRequest, bytes]:
        """One request head, whole within `handshake_timeout_s` (slowloris) and `max_head_bytes`."""
        parser = http.HeadParser(self.settings.max_head_bytes)
        with trio.move_on_after(self.settings.handshake_timeout_s):
            request = parser.feed(leftover)
            while request is None:
                if not tls_buffered(sock):
                    await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(self.settings.max_head_bytes)
                except WOULD_BLOCK:
                    continue
                except OSError as exc:
                    raise ConnectionGone(str(exc)) from exc
                if not data:
                    raise ConnectionGone("closed before a request")
                request = parser.feed(data)
            return request, parser.unread
        self.metrics.dropped.labels("handshake timeout").inc()
        raise HttpRefusal(408, "request-timeout", "the request head did not arrive in time")

    def _ops_answer(self, route: Route) -> bytes:
        if route is Route.HEALTHZ:
            return http.response_bytes(200, b'{"status":"ok"}', keep_alive=True)
        if route is Route.READYZ:
            if self.draining:
                return http.problem_bytes(
                    HttpRefusal(503, "draining", "this gateway is restarting"), keep_alive=True
                )
            return http.response_bytes(200, b'{"status":"ready"}', keep_alive=True)
        return http.response_bytes(
            200,
            generate_latest(self.metrics.registry),
            content_type=b"text/plain; version=0.0.4",
            keep_alive=True,
        )

    # --- draining --------------------------------------------------------------------------------

    async def drain(self) -> None:
        """GOAWAY to every connection at a random moment within the drain window, then wait for them.

        Staggering the closes spreads the reconnects of clients that ignore the hint; the hint itself
        adds up to `goaway_max_delay_ms` more for those that honour it."""
        self.draining = True
        settings = self.settings
        started = trio.current_time()
        links = list(self.hub.links())
        schedule = sorted((random.uniform(0, settings.drain_window_s), i) for i in range(len(links)))
        logs.event(log, "drain_started", connections=len(links), window_s=settings.drain_window_s)
        with trio.move_on_after(settings.drain_timeout_s):
            for offset, index in schedule:
                await trio.sleep_until(started + offset)
                link = links[index]
                if link.closing is None:
                    head = await self.current_head(link.user_id)
                    delay = random.randint(0, settings.goaway_max_delay_ms)
                    link.goaway(delay, head, settings.max_pending_bytes)
            if self.open_connections > 0:
                await self._all_closed.wait()
        logs.event(
            log, "drain_finished", remaining=len(self.hub), seconds=round(trio.current_time() - started, 3)
        )


def _try_send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.send(data)


def _send_or_gone(sock: socket.socket, data: bytes) -> None:
    # Ops answers are small; a client whose buffer cannot take them is not worth waiting for.
    try:
        sent = sock.send(data)
    except OSError as exc:
        raise ConnectionGone(str(exc)) from exc
    if sent < len(data):
        raise ConnectionGone("client is not reading")
