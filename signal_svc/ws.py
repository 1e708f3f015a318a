"""`GET /v1/signal`: the WebSocket transport.

The handshake and every byte the client sends go through wsproto. Server frames do not: a NEW frame
is 22 constant bytes (unmasked, 2-byte header), pre-encoded once per publication in `Delivery` and
written by the bus callback. No extensions are negotiated, so those bytes are always valid.

Clients only send control frames (pong, close, the odd ping). A data frame closes the connection with
1008 (policy violation), or 1009 if it is already larger than `max_client_frame_bytes`.
"""

from __future__ import annotations

import contextlib
import random
import socket
from typing import TYPE_CHECKING

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from pingpull import wire
from signal_svc.delivery import WS_BINARY_20, Delivery, ws_frame
from signal_svc.errors import ConnectionGone, HttpRefusal
from signal_svc.http import SignalRequest
from signal_svc.link import WOULD_BLOCK, Link, linger

if TYPE_CHECKING:
    from signal_svc.gateway import Gateway

# Close codes (RFC 6455 §7.4.1).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_RESTARTING = 1012
CLOSE_TRY_LATER = 1013
_LINGER_S = 1.0


class WsLink(Link):
    __slots__ = ("ws",)
    kind = "ws"

    def __init__(self, sock: socket.socket, user_id: int, device_id: int, ws: WsConnection) -> None:
        super().__init__(sock, user_id, device_id)
        self.ws = ws

    def encode(self, delivery: Delivery) -> bytes:
        return delivery.ws

    def push(self, frame: bytes) -> None:
        """The fan-out hot path: one 22-byte concatenation and one non-blocking send.

        Same outcome as `deliver` (the kernel takes all of it, or the rest is queued and the task
        woken to flush on writability, or the connection is closed), in fewer calls. Anything
        already queued, or a closing connection, takes the general path, which keeps the order."""
        if self.pending is None and self.closing is None:
            data = WS_BINARY_20 + frame
            try:
                sent = self.sock.send(data)
            except WOULD_BLOCK:
                sent = 0
            except OSError:
                self.close_soon("connection lost")
                return
            if sent != len(data):
                self.pending = bytearray(data[sent:])
                self._wake()
        elif self.closing is None:
            self.write(WS_BINARY_20 + frame, self.max_pending_bytes)

    def goaway(self, delay_ms: int, head: int, max_pending_bytes: int) -> None:
        self.write(ws_frame(wire.encode_goaway(delay_ms, head)), max_pending_bytes)
        self.close_soon("draining")


def accept_handshake(request: SignalRequest) -> tuple[bytes, WsConnection]:
    """Validate the upgrade with wsproto; the 101 answer and the frame-level connection, or a refusal."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.initiate_upgrade_connection(request.headers, request.path)
        events = list(handshake.events())
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        headers = (
            [(bytes(k), bytes(v)) for k, v in hint.headers] if isinstance(hint, RejectConnection) else []
        )
        slug = "upgrade-required" if status == 426 else "bad-request"
        raise HttpRefusal(status, slug, f"not a valid WebSocket upgrade: {exc}", headers=headers) from exc
    if not any(isinstance(event, Request) for event in events):
        raise HttpRefusal(400, "bad-request", "not a valid WebSocket upgrade")
    accept = handshake.send(AcceptConnection())  # no extensions, no subprotocol
    connection = handshake.connection
    assert connection is not None
    return accept, connection


def accept_websocket(request: SignalRequest) -> tuple[bytes, WsConnection]:
    if not (request.header_has_token(b"connection", b"upgrade") and request.header(b"upgrade")):
        raise HttpRefusal(
            426,
            "upgrade-required",
            "GET /v1/signal is a WebSocket endpoint",
            headers=[(b"Upgrade", b"websocket")],
        )
    return accept_handshake(request)


def _next_ping_at(interval_s: float) -> float:
    # Jittered per connection and per ping, so pings never arrive in synchronised waves.
    return trio.current_time() + interval_s * random.uniform(0.8, 1.0)


async def serve_websocket(
    gateway: Gateway,
    sock: socket.socket,
    accept: bytes,
    ws: WsConnection,
    user_id: int,
    device_id: int,
    leftover: bytes,
) -> None:
    """One WebSocket session, in this one coroutine: its frame is what an idle connection keeps."""
    link = WsLink(sock, user_id, device_id, ws)
    settings = gateway.settings
    hello_head = await gateway.attach_and_read_head(link)
    held, link.pending = link.pending, None
    try:
        await link.send_all(
            accept
            + ws_frame(wire.encode_hello(hello_head, int(settings.ping_interval_s)))
            + bytes(held or b"")
        )
        del accept, held
        if leftover:
            ws.receive_data(leftover)
        del leftover
        deadline = _next_ping_at(settings.ping_interval_s)
        awaiting_pong = False
        close_code: int | None = None
        while close_code is None:
            try:
                data = await link.wait(deadline)
            except ConnectionGone:
                return
            if link.closing is not None:
                if link.closing in ("slow consumer", "connection lost"):
                    gateway.metrics.dropped.labels(link.closing).inc()
                    return
                close_code = CLOSE_RESTARTING if link.closing == "draining" else CLOSE_NORMAL
                break
            if data:
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Pong):
                        awaiting_pong = False
                        deadline = _next_ping_at(settings.ping_interval_s)
                    elif isinstance(event, Ping):
                        await link.send_all(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        if ws.state is not ConnectionState.REMOTE_CLOSING:
                            close_code = int(event.code)  # wsproto's verdict on bytes it could not parse
                            break
                        await link.send_all(ws.send(event.response()))
                        await linger(sock, _LINGER_S)
                        return
                    elif isinstance(event, TextMessage | BytesMessage):
                        too_big = len(event.data) > settings.max_client_frame_bytes
                        close_code = CLOSE_TOO_BIG if too_big else CLOSE_POLICY
                        break
            if close_code is None and trio.current_time() >= deadline:
                if awaiting_pong:
                    gateway.metrics.dropped.labels("ghost").inc()
                    return  # a ghost: no close handshake, just free it
                await link.send_all(ws.send(Ping(b"")))
                awaiting_pong = True
                deadline = trio.current_time() + settings.ping_timeout_s
        reason = _CLOSE_REASONS.get(close_code, "")
        with contextlib.suppress(ConnectionGone):
            await link.send_all(ws.send(CloseConnection(code=close_code, reason=reason)))
            await linger(sock, _LINGER_S)
    except ConnectionGone:
        return
    finally:
        gateway.hub.detach(link)


_CLOSE_REASONS = {CLOSE_POLICY: "clients send control frames only", CLOSE_TOO_BIG: "frame too large"}
