"""Streaming request bodies with back-pressure, for the upload routes.

Quart buffers a request body as it arrives: its ASGI loop appends every chunk the server hands it to
a bytearray, however far ahead of the handler it gets. For JSON routes (64 KiB at most) that is
fine; an upload must instead stay within a bounded buffer while the handler writes to disk or S3.
`StreamingBody` is the body of upload routes: it stops the ASGI loop from receiving more once
`HIGH_WATER_BYTES` wait unread, so the server stops reading the socket and TCP (or the HTTP/2 flow
window) slows the client down. Size limits on those routes are checked by the handler on the total
streamed (Quart's own limit applies to what is buffered, not to the whole body).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
from quart.wrappers.request import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody

from content_svc.errors import PayloadTooLarge
from content_svc.media.errors import RequestTimeout, UploadTruncated

HIGH_WATER_BYTES = 1024 * 1024

_STREAMING = (("POST", "/v1/media"), ("POST", "/v1/uploads"), ("PATCH", "/v1/uploads/"))


def is_streaming_route(method: str, path: str) -> bool:
    """Upload routes, where the body goes to storage as it arrives."""
    path = path.rstrip("/") if path != "/" else path
    for wanted_method, prefix in _STREAMING:
        if method == wanted_method and (path == prefix or (prefix.endswith("/") and path.startswith(prefix))):
            return True
    return False


class StreamingBody(TrioBody):
    def __init__(self, expected_content_length: int | None) -> None:
        super().__init__(expected_content_length, None)
        self._room = trio.Event()
        self._room.set()
        self._discarding = False

    def append(self, data: bytes) -> None:
        if self._discarding:
            return
        super().append(data)
        if len(self._data) >= HIGH_WATER_BYTES and self._room.is_set():
            self._room = trio.Event()

    def discard_rest(self) -> None:
        """The handler has answered: whatever of the body is still to come is read and dropped.

        Pacing must stop here. Hypercorn hands the body over through a small queue and, once the
        answer is sent, puts an `http.disconnect` on that same queue before it closes the
        connection; if nobody takes the body chunks off the queue, that put waits forever, the close
        never happens, and a client that writes its whole body before reading (httpx, curl) waits
        with it: both sides hang."""
        self._discarding = True
        self._data.clear()
        self._room.set()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._room.set()
        return data

    @property
    def complete(self) -> bool:
        """The whole body arrived (it may not have been read by the handler yet)."""
        return self._complete.is_set()

    async def wait_for_room(self) -> None:
        while len(self._data) >= HIGH_WATER_BYTES and not self._discarding:
            await self._room.wait()


class PacedHTTPConnection(TrioASGIHTTPConnection):
    """Receives the next body chunk only when a streaming body has room for it, and drops the
    rest of the body once the answer starts."""

    async def handle_request(self, nursery: trio.Nursery, request: Request, send: Any) -> None:  # type: ignore[override]
        body = request.body
        if isinstance(body, StreamingBody):

            async def send_then_discard(message: Any) -> None:
                body.discard_rest()
                await send(message)

            await super().handle_request(nursery, request, send_then_discard)
        else:
            await super().handle_request(nursery, request, send)

    async def handle_messages(self, nursery: trio.Nursery, request: Request, receive: Any) -> None:  # type: ignore[override]
        body = request.body
        if isinstance(body, StreamingBody):

            async def paced_receive() -> Any:
                await body.wait_for_room()
                return await receive()

            await super().handle_messages(nursery, request, paced_receive)
        else:
            await super().handle_messages(nursery, request, receive)


async def iter_body(
    request: Request, *, max_bytes: int, idle_timeout_s: float, what: str = "upload"
) -> AsyncIterator[bytes]:
    """The request's body chunk by chunk; 413 past `max_bytes`, 408 when the client stalls, and
    an error if it ends short of its Content-Length."""
    body = request.body
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"the {what} may be at most {max_bytes} bytes", max_bytes=max_bytes)
    total = 0
    iterator = body.__aiter__()
    while True:
        with trio.move_on_after(idle_timeout_s) as waited:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
        if waited.cancelled_caught:
            raise RequestTimeout(f"no {what} bytes arrived for {idle_timeout_s:g} s")
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"the {what} may be at most {max_bytes} bytes", max_bytes=max_bytes)
        if chunk:
            yield chunk
    if declared is not None and total != declared:
        raise UploadTruncated(f"the body ended after {total} of {declared} bytes")
