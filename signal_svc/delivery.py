"""One frame from the bus, encoded at most once per transport and shared by every connection.

A WebSocket server frame is never masked, so the 22 bytes on the wire are the same for every client:
encode once, write many. The same holds for the SSE chunk and the long-poll answer.
"""

from __future__ import annotations

import json

from pingpull import wire
from signal_svc import http

WS_BINARY_20 = b"\x82\x14"  # FIN + binary opcode, unmasked, 20-byte payload


class Delivery:
    __slots__ = ("_poll", "_sse", "_ws", "frame")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._poll: bytes | None = None

    @property
    def head(self) -> int:
        return int.from_bytes(self.frame[4:12], "big")

    @property
    def kind(self) -> int:
        return self.frame[1]

    @property
    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = WS_BINARY_20 + self.frame
        return self._ws

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = http.chunk(wire.to_sse_event(wire.decode(self.frame)))
        return self._sse

    @property
    def poll_answer(self) -> bytes:
        """The whole 200 response of a hanging GET woken by this frame."""
        if self._poll is None:
            head = self.head
            body = {"head": None if head == wire.UNKNOWN_HEAD else head}
            self._poll = http.response_bytes(
                200, json.dumps(body, separators=(",", ":")).encode(), keep_alive=True
            )
        return self._poll


def ws_frame(frame: bytes) -> bytes:
    return WS_BINARY_20 + frame
