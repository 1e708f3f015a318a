"""A client connection's delivery side, and the one-task wait loop every transport shares.

The gateway runs exactly one trio task per connection and nothing else: no reader task, no memory
channel, no send lock. Frames from the bus are written *synchronously* by the bus callback with a
non-blocking `send` on the raw socket: on loopback or any healthy link the 22 bytes fit in the
kernel's send buffer and the connection's task never wakes. Only when the kernel refuses (a client
that stopped reading) are the bytes queued in `pending`, and the task is woken, by cancelling the
scope it is parked in, to wait for writability and flush. A client whose queue passes
`max_pending_bytes` is a slow consumer and is dropped.

Because trio runs one task at a time, the callback and the connection's task never interleave
mid-write; ordering holds as long as the callback appends whenever something is already queued.
"""

from __future__ import annotations

import abc
import contextlib
import socket
import ssl
import time

import trio

from pingpull.bus import Subscription
from signal_svc.delivery import Delivery
from signal_svc.errors import ConnectionGone

_RECV_BYTES = 4096
# "Try again later" from a plain non-blocking socket, or from a TLS one (wss://), whose would-block
# errors are ssl.SSLError subclasses rather than BlockingIOError.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Link(abc.ABC):
    """One connection's state while it is attached to the hub. Subclasses add their transport."""

    __slots__ = (
        "closing",
        "device_id",
        "max_pending_bytes",
        "opened_at",
        "pending",
        "sock",
        "subscription",
        "user_id",
        "waker",
    )
    kind = "link"

    def __init__(self, sock: socket.socket, user_id: int, device_id: int) -> None:
        self.sock = sock
        self.user_id = user_id
        self.device_id = device_id
        self.pending: bytearray | None = None
        self.waker: trio.CancelScope | None = None
        # Why the hub or the drain wants this connection to end (None: it should live).
        self.closing: str | None = None
        self.opened_at = time.monotonic()
        # Set by the hub on attach: this link's bus registration (it is its device's receiver) and
        # the queue limit past which it is a slow consumer.
        self.subscription: Subscription | None = None
        self.max_pending_bytes = 0

    # --- called synchronously from the bus callback, the hub and the drain ----------------------

    def push(self, frame: bytes) -> None:
        """The bus receiver: write `frame` now, without awaiting. Transports with a cheaper path
        than building a `Delivery` (WebSocket) override this."""
        self.deliver(Delivery(frame), self.max_pending_bytes)

    def unsubscribe(self) -> None:
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None

    def deliver(self, delivery: Delivery, max_pending_bytes: int) -> None:
        if self.closing is None:
            data = self.encode(delivery)
            if data is not None:
                self.write(data, max_pending_bytes)

    @abc.abstractmethod
    def encode(self, delivery: Delivery) -> bytes | None:
        """This transport's bytes for a frame (shared, pre-encoded), or None to ignore it."""

    @abc.abstractmethod
    def goaway(self, delay_ms: int, head: int, max_pending_bytes: int) -> None:
        """Tell the client to reconnect after `delay_ms` (elsewhere), and end the session."""

    def write(self, data: bytes, max_pending_bytes: int) -> None:
        if self.pending is not None:
            if len(self.pending) + len(data) > max_pending_bytes:
                self.close_soon("slow consumer")
            else:
                self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except WOULD_BLOCK:
            sent = 0
        except OSError:
            self.close_soon("connection lost")
            return
        if sent < len(data):
            self.pending = bytearray(data[sent:])
            self._wake()

    def close_soon(self, reason: str) -> None:
        if self.closing is None:
            self.closing = reason
        self._wake()

    def _wake(self) -> None:
        if self.waker is not None:
            self.waker.cancel()

    # --- called by the connection's own task -----------------------------------------------------

    async def wait(self, deadline: float) -> bytes | None:
        """Park until the client sends bytes (returned), the deadline passes or we are woken (None).

        While bytes are queued, waits for writability and flushes instead of reading."""
        with trio.CancelScope(deadline=deadline) as scope:
            self.waker = scope
            try:
                if self.closing is not None:
                    return None
                if self.pending is not None:
                    await trio.lowlevel.wait_writable(self.sock)
                    self._flush()
                    return None
                if not tls_buffered(self.sock):
                    await trio.lowlevel.wait_readable(self.sock)
            finally:
                self.waker = None
        if scope.cancelled_caught:
            return None
        return self.recv()

    def recv(self) -> bytes | None:
        try:
            data = self.sock.recv(_RECV_BYTES)
        except WOULD_BLOCK:
            return None  # a spurious wake-up: nothing to read yet
        except OSError as exc:
            raise ConnectionGone(f"receive failed: {exc}") from exc
        if not data:
            raise ConnectionGone("peer closed the connection")
        return data

    def _flush(self) -> None:
        assert self.pending is not None
        try:
            sent = self.sock.send(self.pending)
        except WOULD_BLOCK:
            return
        except OSError as exc:
            raise ConnectionGone(f"send failed: {exc}") from exc
        del self.pending[:sent]
        if not self.pending:
            self.pending = None

    async def send_all(self, data: bytes) -> None:
        """Write from the connection's own task (handshake answers, closes), honouring the queue."""
        if self.pending is None:
            try:
                sent = self.sock.send(data)
            except WOULD_BLOCK:
                sent = 0
            except OSError as exc:
                raise ConnectionGone(f"send failed: {exc}") from exc
            if sent == len(data):
                return
            self.pending = bytearray(data[sent:])
        else:
            self.pending += data
        await self.flush()

    async def flush(self) -> None:
        """Wait until everything queued has been written."""
        while self.pending is not None:
            await trio.lowlevel.wait_writable(self.sock)
            self._flush()


async def linger(sock: socket.socket, seconds: float = 0.5) -> None:
    """Half-close, then read and discard briefly: closing with unread input sends RST, which can
    destroy our answer before the client reads it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    with trio.move_on_after(seconds):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                if not sock.recv(65536):
                    return
            except WOULD_BLOCK:
                continue
            except OSError:
                return


def tls_buffered(sock: socket.socket) -> bool:
    """A TLS socket may hold decrypted bytes that the kernel no longer reports as readable."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


async def tls_handshake(sock: ssl.SSLSocket) -> None:
    """Drive a non-blocking server-side TLS handshake to completion (the caller bounds its time)."""
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(sock)
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(sock)
