"""`GET /v1/signal/poll?after=S&timeout=T`: the hanging GET of last resort.

Answers 200 `{"head":H}` as soon as the user's head passes `after`, 204 at the timeout. The
connection stays open for the next poll (keep-alive), so a polling phone pays one TCP handshake, not
one per poll.
"""

from __future__ import annotations

import json
import math
import socket
from typing import TYPE_CHECKING

import trio

from pingpull import wire
from pingpull.config import SignalSettings
from signal_svc import http
from signal_svc.delivery import Delivery
from signal_svc.errors import ConnectionGone, HttpRefusal
from signal_svc.http import SignalRequest
from signal_svc.link import Link

if TYPE_CHECKING:
    from signal_svc.gateway import Gateway

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n\r\n"


class PollLink(Link):
    __slots__ = ("after", "answered")
    kind = "poll"

    def __init__(self, sock: socket.socket, user_id: int, device_id: int, after: int) -> None:
        super().__init__(sock, user_id, device_id)
        self.after = after
        self.answered = False

    def encode(self, delivery: Delivery) -> bytes | None:
        if self.answered or delivery.kind not in (wire.Kind.NEW, wire.Kind.RECEIPT):
            return None
        head = delivery.head
        if head != wire.UNKNOWN_HEAD and head <= self.after:
            return None
        self.answered = True
        self._wake()  # the connection's task must detach and read the next request
        return delivery.poll_answer

    def goaway(self, delay_ms: int, head: int, max_pending_bytes: int) -> None:  # noqa: ARG002 - no head in a 503
        if not self.answered:
            self.answered = True
            refusal = HttpRefusal(
                503,
                "draining",
                "this gateway is restarting",
                headers=[(b"Retry-After", b"%d" % math.ceil(delay_ms / 1000))],
            )
            self.write(http.problem_bytes(refusal), max_pending_bytes)
        self.close_soon("draining")


def head_answer(head: int) -> bytes:
    return http.response_bytes(
        200, json.dumps({"head": head}, separators=(",", ":")).encode(), keep_alive=True
    )


def poll_params(request: SignalRequest, settings: SignalSettings) -> tuple[int, int]:
    """`after` (required) and `timeout` in seconds (at most poll_max_timeout_s)."""
    after = http.int_param(request, "after", default=None, low=0, high=wire.UNKNOWN_HEAD - 1)
    limit = int(settings.poll_max_timeout_s)
    return after, http.int_param(request, "timeout", default=limit, low=0, high=limit)


async def serve_poll(
    gateway: Gateway, sock: socket.socket, after: int, timeout_s: int, user_id: int, device_id: int
) -> bool:
    """Answer one hanging GET; returns whether the connection may carry another request."""
    link = PollLink(sock, user_id, device_id, after)
    head = await gateway.attach_and_read_head(link)
    held, link.pending = link.pending, None
    try:
        if held:  # a publication arrived while we read the head: it is the answer
            await link.send_all(bytes(held))
            return link.closing is None
        if head != wire.UNKNOWN_HEAD and head > after:
            link.answered = True
            await link.send_all(head_answer(head))
            return True
        deadline = trio.current_time() + timeout_s
        while not link.answered:
            try:
                data = await link.wait(deadline)
            except ConnectionGone:
                return False
            if link.closing is not None:
                await link.flush()
                return False
            if data:
                raise HttpRefusal(400, "bad-request", "send the next request after the answer")
            if trio.current_time() >= deadline and not link.answered:
                link.answered = True
                await link.send_all(NO_CONTENT)
                return True
        await link.flush()  # what the callback could not write at once
        return True
    finally:
        gateway.hub.detach(link)
