"""Media bytes from the page cache to the socket with sendfile(2), on HTTP/1.1 without TLS.

Read into Python and written out again, a 1 MiB range costs two copies and a megabyte allocation:
`preadv` into a buffer, the buffer into `bytes`, the bytes into the socket (and hypercorn's h11
layer wants `bytes`). That was half of a 1 MiB range's CPU (docs/decisions/0006-zero-copy-media.md).
`sendfile` hands the kernel the file's cached pages instead: nothing is copied in user space.

ASGI has an extension for exactly this, ``http.response.zerocopysend``: the server advertises it in
``scope["extensions"]``, the app sends ``{"type": "http.response.zerocopysend", "file": fd,
"offset": ..., "count": ..., "more_body": ...}``. hypercorn 0.18 does not implement it, so it is
added to hypercorn's trio worker for HTTP/1.1 connections without TLS (the only ones where the bytes
go to a plain socket), in three places:

* the h11 protocol's `HTTPStream` (here) advertises the extension and turns the message into a
  body event whose data is a `FileSpan` (h11 frames it by its length, as its "data passthrough"
  allows);
* `coalesced_writes` writes the head and framing around the span;
* `socket_writes` sends the span with `sendfile`, waiting for the socket to drain when it is full,
  under the same send lock, shield and stall timeout as every other write.

The caller owns the descriptor and must keep it open until its `send` returns: hypercorn has sent
every byte (or the connection has failed) by then. If the file turns out shorter than the span, the
promised Content-Length cannot be kept and the connection is closed.
"""

from __future__ import annotations

from typing import Any, Final

from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol.events import Body
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.utils import UnexpectedMessageError, suppress_body

from content_svc import socket_writes
from content_svc.socket_writes import FileSpan

ZERO_COPY_SEND: Final = "http.response.zerocopysend"


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


# The name hypercorn's h11 protocol looks up each time it opens a stream for a request.
_h11_names = vars(hypercorn_h11)
_original_stream = _h11_names["HTTPStream"]


def install() -> None:
    """Idempotent. The spans are written by `socket_writes`, installed here if it is not yet."""
    if not socket_writes.installed():
        socket_writes.install()
    _h11_names["HTTPStream"] = ZeroCopyHTTPStream


def installed() -> bool:
    return _h11_names["HTTPStream"] is ZeroCopyHTTPStream and socket_writes.installed()


def uninstall() -> None:
    _h11_names["HTTPStream"] = _original_stream
