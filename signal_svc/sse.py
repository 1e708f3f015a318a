"""`GET /v1/signal/sse`: Server-Sent Events, for clients and networks where WebSocket is refused.

The stream opens with `retry:` and a hello event carrying the current head as its `id:`, so a client
resuming with `Last-Event-ID` behind the head learns at once that it must pull. Heartbeats are
comment lines; they keep proxies from timing the stream out and surface a dead peer as a failed write.
"""

from __future__ import annotations

import random
import socket
from typing import TYPE_CHECKING

import trio

from pingpull import wire
from signal_svc import http
from signal_svc.delivery import Delivery
from signal_svc.errors import ConnectionGone, HttpRefusal
from signal_svc.http import SignalRequest
from signal_svc.link import Link

if TYPE_CHECKING:
    from signal_svc.gateway import Gateway

_HEARTBEAT = http.chunk(b": ping\n\n")
_END_OF_STREAM = b"0\r\n\r\n"


class SseLink(Link):
    __slots__ = ()
    kind = "sse"

    def encode(self, delivery: Delivery) -> bytes:
        return delivery.sse

    def goaway(self, delay_ms: int, head: int, max_pending_bytes: int) -> None:
        frame = wire.decode(wire.encode_goaway(delay_ms, head))
        # `retry:` first: a browser's EventSource ignores JSON but honours the reconnection time.
        self.write(
            http.chunk(b"retry: %d\n\n" % delay_ms) + http.chunk(wire.to_sse_event(frame)), max_pending_bytes
        )
        self.close_soon("draining")


def last_event_id(request: SignalRequest) -> int | None:
    raw = request.header(b"last-event-id")
    text = raw.decode("ascii", "replace") if raw is not None else request.query.get("last_event_id")
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) >= wire.UNKNOWN_HEAD:
        raise HttpRefusal(400, "bad-request", "Last-Event-ID must be an inbox seq")
    return int(text)


async def serve_sse(gateway: Gateway, sock: socket.socket, user_id: int, device_id: int) -> None:
    """The hello opening the stream carries the current head, which answers any Last-Event-ID."""
    link = SseLink(sock, user_id, device_id)
    settings = gateway.settings
    head = await gateway.attach_and_read_head(link)
    held, link.pending = link.pending, None
    opening = (
        http.stream_head_bytes(b"text/event-stream; charset=utf-8", [(b"X-Accel-Buffering", b"no")])
        + http.chunk(b"retry: %d\n\n" % settings.sse_retry_ms)
        + http.chunk(wire.to_sse_event(wire.Frame(wire.Kind.HELLO, head, 0, int(settings.ping_interval_s))))
    )
    try:
        await link.send_all(opening + bytes(held or b""))
        deadline = trio.current_time() + settings.ping_interval_s * random.uniform(0.8, 1.0)
        while True:
            try:
                await link.wait(deadline)  # anything an SSE client sends is ignored; EOF ends it
            except ConnectionGone:
                return
            if link.closing is not None:
                if link.closing == "draining":
                    await link.send_all(_END_OF_STREAM)
                else:
                    gateway.metrics.dropped.labels(link.closing).inc()
                return
            if trio.current_time() >= deadline:
                await link.send_all(_HEARTBEAT)
                deadline = trio.current_time() + settings.ping_interval_s * random.uniform(0.8, 1.0)
    except ConnectionGone:
        return
    finally:
        gateway.hub.detach(link)
