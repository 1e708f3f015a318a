"""hypercorn's writes to a connection: bytes or a file span, and a limit on how long a write may stall.

hypercorn's trio `TCPServer.protocol_send` writes each piece with `send_all` in a shielded cancel
scope: nothing can interrupt it, Quart's response timeout included. A client that stops reading (an
app suspended with its socket open, a slowloris reader) therefore held its connection, its task and
the answer's buffers for as long as it liked. This module replaces that one method:

* bytes are written with `write(2)` straight away and only wait when the socket is full, and each
  wait for room is bounded by the stall timeout (as nginx's ``send_timeout``: the time between two
  successful writes, not the whole answer, so a slow but moving download of a large file is fine);
* a `FileSpan` (`zero_copy`) is sent with `sendfile(2)` under the same rule;
* a stalled, broken or short write closes the connection; the protocol is told it is closed.

TLS streams keep `send_all`, under one stall deadline per write (hypercorn writes at most one body
chunk at a time). The timeout is process-wide: it is set when the content app is created.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer

DEFAULT_STALL_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class FileSpan:
    """`count` bytes of the open file `fd` from `offset`, preceded on the wire by `head`."""

    fd: int
    offset: int
    count: int
    head: bytes = b""

    def __len__(self) -> int:  # h11 frames a passed-through body by its len()
        return self.count


class WriteStalled(trio.BrokenResourceError):
    """The peer took no bytes for the whole stall timeout."""


async def _wait_for_room(sock: trio.socket.SocketType, stall_s: float) -> None:
    with trio.move_on_after(stall_s) as waited:
        await trio.lowlevel.wait_writable(sock)
    if waited.cancelled_caught:
        raise WriteStalled(f"the peer read nothing for {stall_s:g} s")


async def send_bytes(sock: trio.socket.SocketType, data: bytes | memoryview, stall_s: float) -> None:
    """All of `data`; waits (at most `stall_s` each time) only while the socket is full."""
    view = memoryview(data)
    while view:
        try:
            sent = os.write(sock.fileno(), view)
        except BlockingIOError:
            await _wait_for_room(sock, stall_s)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"write failed: {exc}") from exc
        view = view[sent:]


async def send_file_span(sock: trio.socket.SocketType, span: FileSpan, stall_s: float) -> None:
    """The span's head, then its bytes with sendfile; `trio.BrokenResourceError` if the peer is gone,
    stalls, or the file ends early (the answer can no longer be completed).

    The head is not sent with MSG_MORE: followed by sendfile on Linux 6.18, that held the end of
    the answer back for ~180 ms (the kernel's cork timer) whenever a span took more than one splice."""
    await send_bytes(sock, span.head, stall_s)
    offset, left = span.offset, span.count
    while left:
        try:
            sent = os.sendfile(sock.fileno(), span.fd, offset, left)
        except BlockingIOError:
            await _wait_for_room(sock, stall_s)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"sendfile failed: {exc}") from exc
        if sent == 0:
            raise trio.BrokenResourceError(f"the file ended {left} bytes before its span")
        offset += sent
        left -= sent


_stall_timeout_s = DEFAULT_STALL_TIMEOUT_S
_original_protocol_send: Callable[[TCPServer, Any], Awaitable[None]] = TCPServer.protocol_send


async def _protocol_send(self: TCPServer, event: Any) -> None:
    if not isinstance(event, RawData):
        await _original_protocol_send(self, event)
        return
    data: Any = event.data
    stream: Any = self.stream  # typed as TLS by hypercorn; a plain SocketStream without it
    async with self.send_lock:
        try:
            with trio.CancelScope(shield=True):
                if isinstance(stream, trio.SocketStream):
                    if isinstance(data, FileSpan):
                        await send_file_span(stream.socket, data, _stall_timeout_s)
                    else:
                        await send_bytes(stream.socket, data, _stall_timeout_s)
                else:  # TLS: never handed a FileSpan (zero_copy does not advertise it there)
                    with trio.fail_after(_stall_timeout_s):
                        await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            # A stalled or short write leaves the socket up: close it, or the client waits for the
            # rest of the answer until the keep-alive timeout.
            await self._close()
            await self.protocol.handle(Closed())


def install(stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S) -> None:
    """Idempotent; the last call's timeout applies to every connection of the process."""
    global _stall_timeout_s
    if stall_timeout_s <= 0:
        raise ValueError("the stall timeout must be positive")
    _stall_timeout_s = stall_timeout_s
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]


def installed() -> bool:
    return TCPServer.protocol_send is _protocol_send


def uninstall() -> None:
    TCPServer.protocol_send = _original_protocol_send  # type: ignore[method-assign,assignment]
