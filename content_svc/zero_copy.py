"""Media bytes from the page cache to the socket with sendfile(2), on HTTP/1.1 without TLS.

Read into Python and written out again, a 1 MiB range costs two copies and a megabyte allocation:
`preadv` into a buffer, the buffer into `bytes`, the bytes into the socket (and hypercorn's h11
layer wants `bytes`). That was half of a 1 MiB range's CPU (docs/decisions/0006-zero-copy-media.md).
`sendfile` hands the kernel the file's cached pages instead: nothing is copied in user space.

ASGI has an extension for exactly this, ``http.response.zerocopysend``: the server advertises it in
``scope["extensions"]``, the app sends ``{"type": "http.response.zerocopysend", "file": fd,
"offset": ..., "count": ..., "more_body": ...}``. hypercorn 0.18 does not implement it, so this
module adds it to hypercorn's trio worker for HTTP/1.1 connections without TLS (the only ones where
the bytes go to a plain socket), in three places:

* the h11 protocol's `HTTPStream` advertises the extension and turns the message into a body event
  whose data is a `FileSpan` (h11 frames it by its length, as its "data passthrough" allows);
* `coalesced_writes` writes the head and framing around the span (see `split_pieces`);
* `TCPServer.protocol_send` sends a `FileSpan` with `sendfile`, waiting for the socket to drain
  when it is full, under the same send lock and shield as every other write.

The caller owns the descriptor and must keep it open until its `send` returns: hypercorn has sent
every byte (or the connection has failed) by then. If the file turns out shorter than the span, the
promised Content-Length cannot be kept and the connection is closed.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol.events import Body
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import UnexpectedMessageError, suppress_body

ZERO_COPY_SEND: Final = "http.response.zerocopysend"


@dataclass(frozen=True, slots=True)
class FileSpan:
    """`count` bytes of the open file `fd` from `offset`, preceded on the wire by `head`."""

    fd: int
    offset: int
    count: int
    head: bytes = b""

    def __len__(self) -> int:  # h11 frames a passed-through body by its len()
        return self.count


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


async def send_file_span(sock: trio.socket.SocketType, span: FileSpan) -> None:
    """Write the span's head, then its bytes with sendfile; raise `trio.BrokenResourceError` if
    the peer is gone or the file ends early (the answer can no longer be completed).

    The head is not sent with MSG_MORE: followed by sendfile on Linux 6.18, that held the end of
    the answer back for ~180 ms (the kernel's cork timer) whenever a span took more than one splice."""
    head = memoryview(span.head)
    while head:
        sent = await sock.send(head)
        head = head[sent:]
    offset, left = span.offset, span.count
    while left:
        try:
            sent = os.sendfile(sock.fileno(), span.fd, offset, left)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"sendfile failed: {exc}") from exc
        if sent == 0:
            raise trio.BrokenResourceError(f"the file ended {left} bytes before its span")
        offset += sent
        left -= sent


class _AdvertisingTaskGroup:
    """Hands hypercorn's task group the app with the extension added to its HTTP scopes."""

    __slots__ = ("_group",)

    def __init__(self, group: Any) -> None:
        self._group = group

    async def spawn_app(self, app: Any, config: Any, scope: Any, send: Any) -> Any:
        if scope["type"] == "http":
            scope["extensions"][ZERO_COPY_SEND] = {}
        return await self._group.spawn_app(app, config, scope, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group, name)


class ZeroCopyHTTPStream(HTTPStream):
    """hypercorn's HTTP stream for h11 connections, with ``http.response.zerocopysend``."""

    def __init__(self, app: Any, config: Any, context: Any, task_group: Any, ssl: bool, *rest: Any) -> None:
        if not ssl:
            task_group = _AdvertisingTaskGroup(task_group)
        super().__init__(app, config, context, task_group, ssl, *rest)

    async def app_send(self, message: Any) -> None:
        if message is None or message["type"] != ZERO_COPY_SEND or self.scheme != "http":
            await super().app_send(message)
            return
        if self.state != ASGIHTTPState.RESPONSE:
            raise UnexpectedMessageError(self.state, message["type"])
        count = int(message.get("count", 0))
        if count and not suppress_body(self.scope["method"], int(self.response["status"])):
            file = message["file"]
            fd = file if isinstance(file, int) else file.fileno()
            span = FileSpan(fd, int(message.get("offset", 0)), count)
            await self.send(Body(stream_id=self.stream_id, data=span))  # type: ignore[arg-type]
        if not message.get("more_body", False):
            await super().app_send({"type": "http.response.body", "body": b"", "more_body": False})


_original_protocol_send: Callable[[TCPServer, Any], Awaitable[None]] = TCPServer.protocol_send
# The name hypercorn's h11 protocol looks up each time it opens a stream for a request.
_h11_names = vars(hypercorn_h11)
_original_stream = _h11_names["HTTPStream"]


async def _protocol_send(self: TCPServer, event: Any) -> None:
    data: Any = event.data if isinstance(event, RawData) else None
    if not isinstance(data, FileSpan):
        await _original_protocol_send(self, event)
        return
    async with self.send_lock:
        try:
            with trio.CancelScope(shield=True):
                await send_file_span(self.stream.socket, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # Unlike a failed write, a short file leaves the socket up: close it, or the client
            # waits for the rest of the body until the keep-alive timeout.
            await self._close()
            await self.protocol.handle(Closed())


def install() -> None:
    """Idempotent."""
    _h11_names["HTTPStream"] = ZeroCopyHTTPStream
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]


def installed() -> bool:
    return _h11_names["HTTPStream"] is ZeroCopyHTTPStream and TCPServer.protocol_send is _protocol_send


def uninstall() -> None:
    _h11_names["HTTPStream"] = _original_stream
    TCPServer.protocol_send = _original_protocol_send  # type: ignore[method-assign,assignment]
