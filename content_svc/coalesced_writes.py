"""An HTTP/1.1 answer leaves in one socket write where it can, instead of three.

hypercorn's h11 protocol writes every h11 event as it comes: the status line and headers, then each
body chunk, then the end of the message (for a Content-Length body, zero bytes, which still costs a
pass through trio's scheduler). A JSON answer therefore took two `send()` calls and three
`send_all` awaits; the client got two TCP segments and woke twice. Per request that is a visible part
of the content service's CPU (docs/architecture.md, "Per-request cost").

Here the head of a final answer is held until the first body chunk or the end of the message and
goes out with it (unless the chunk is large: see `_COPY_AT_MOST_BYTES`); an empty end of message
that has nothing to carry is not written at all.
A body that is a file span (sendfile, `zero_copy`) carries the held head with it.
Interim answers (100 Continue) are written at once: a client waits for them before it sends its
body. Nothing else changes: the same bytes, in the same order, from the same h11 state machine.

This replaces one method of hypercorn's `H11Protocol` (hypercorn 0.18; a test pins the behaviour
on the wire, so an upgrade that changes the method shows up there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import h11
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol

from content_svc.socket_writes import FileSpan

_HELD = "_pingpull_held_head"
# Up to this size a body is copied behind its head to leave in one write (a copy of 64 KiB costs a few
# microseconds, a write and a scheduler pass tens of them); a larger body goes in a write of its own.
_COPY_AT_MOST_BYTES = 64 * 1024
_original = H11Protocol._send_h11_event


async def _send_h11_event_coalesced(self: Any, event: Any) -> None:
    body: Any = event.data if isinstance(event, h11.Data) else None
    passthrough = isinstance(body, FileSpan)
    try:
        # A file span (`zero_copy`) is framed by h11 without being joined into bytes.
        output = (
            self.connection.send_with_data_passthrough(event) if passthrough else self.connection.send(event)
        )
    except h11.LocalProtocolError:
        if self.connection.their_state != h11.ERROR:
            raise
        return
    held: bytes | None = getattr(self, _HELD, None)
    if passthrough:
        # The held head and any framing before the span travel with it; what follows goes after.
        setattr(self, _HELD, None)
        for write in split_pieces(output, held or b""):
            await self.send(RawData(data=write))  # type: ignore[arg-type]  # a FileSpan: socket_writes sends it
        return
    data: bytes = output
    if isinstance(event, h11.Response):
        setattr(self, _HELD, (held or b"") + data)
        return
    if held:
        setattr(self, _HELD, None)
        if len(data) > _COPY_AT_MOST_BYTES:
            # Joining would copy a large body once more than sending it does; two writes cost less.
            await self.send(RawData(data=held))
        else:
            data = held + data
    if data:
        await self.send(RawData(data=data))


def split_pieces(pieces: Sequence[Any], before: bytes = b"") -> list[bytes | FileSpan]:
    """h11's passthrough output as writes: bytes around a span go with it (before) or after it."""
    writes: list[bytes | FileSpan] = []
    pending = before
    for piece in pieces:
        if isinstance(piece, FileSpan):
            writes.append(FileSpan(piece.fd, piece.offset, piece.count, pending + piece.head))
            pending = b""
        else:
            pending += piece
    if pending:
        writes.append(pending)
    return writes


def install() -> None:
    """Idempotent."""
    H11Protocol._send_h11_event = _send_h11_event_coalesced  # type: ignore[method-assign]


def installed() -> bool:
    return H11Protocol._send_h11_event is _send_h11_event_coalesced


def uninstall() -> None:
    H11Protocol._send_h11_event = _original  # type: ignore[method-assign]
