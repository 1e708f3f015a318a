"""The fast lane: small media answers served in front of Quart.

A player seeking through a video, a chat scrolling past its pictures: media downloads come in bursts
of small requests, and each one paid about twice its own work in the framework around it (request and
app contexts, routing, before/after hooks, the response object, a streamed body wrapped in tasks;
docs/architecture.md, "Per-request cost"). When everything a download needs is already in memory
the lane answers it directly on the ASGI interface, with the same decisions as the route
(`downloads`), the same metrics and the same request log:

* a bearer token this process verified before (`DeviceCache.recall`) and a device seen recently,
* a remembered "this user may read this media" (`AccessCache`),
* an answer that is a 304, or one span of local disk: of any size if the page cache holds all of it
  and the server can send a file (`zero_copy`, HTTP/1.1 without TLS), else at most one read chunk
  (`read_chunk_bytes`).

Anything else (a first request, a token to verify, a database question, several ranges, a 416, a
large object not in memory, S3, any error) is handed to the Quart app untouched, which answers it,
problem+json included. Nothing is sent before the lane is sure it can answer, so a read that fails
also falls back.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Final

from content_svc.auth import DeviceCache, Principal
from content_svc.context import ContentContext, MediaContext
from content_svc.errors import ContentError
from content_svc.fast_path import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    encode_headers,
    known_principal,
    single_headers,
    trace,
)
from content_svc.media import downloads, records
from content_svc.zero_copy import ZERO_COPY_SEND

ROUTE: Final = "/v1/media/<media_id>"  # the Quart rule: metrics and logs use one label for both paths
_PREFIX: Final = "/v1/media/"
_METHODS: Final = frozenset({"GET", "HEAD"})
# Request headers the lane reads; if one of them comes twice the request is left to the route.
_WANTED: Final = frozenset({b"authorization", b"range", b"if-range", b"if-none-match"})


class _Headers:
    """The few request headers the decisions read, by their canonical names."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def get(self, key: str, /) -> str | None:
        return self._values.get(key.lower())


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: dict[str, str]
    span: downloads.Span | None  # None: a 304, no body
    zero_copy: bool  # the server takes a file to send (the span may then exceed one read chunk)
    media_id: str
    principal: Principal


class MediaFastLane:
    """ASGI middleware: answers what it can from memory, passes every other request to `app`."""

    def __init__(self, app: ASGIApp, ctx: ContentContext, devices: DeviceCache) -> None:
        self._app = app
        self._ctx = ctx
        self._devices = devices

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        media = self._ctx.media
        if (
            media is not None
            and media.settings.backend == "local"
            and scope["type"] == "http"
            and scope["method"] in _METHODS
            and scope["path"].startswith(_PREFIX)
        ):
            started = time.perf_counter()
            answer = self._decide(scope, media)
            if answer is not None and await self._serve(scope, send, media, answer, started):
                return
        await self._app(scope, receive, send)

    def _decide(self, scope: Scope, media: MediaContext) -> _Answer | None:
        """The answer, if memory holds all it takes; no awaits, no side effects but cache bookkeeping."""
        media_id = scope["path"][len(_PREFIX) :]
        if not records.looks_like_media_id(media_id):
            return None
        values = single_headers(scope, _WANTED)
        if values is None:
            return None
        principal = known_principal(self._ctx, self._devices, values.get("authorization", ""))
        if principal is None:
            return None
        record = media.access_cache.get(principal.user_id, media_id)
        if record is None:
            return None
        headers_in = _Headers(values)
        headers = downloads.validator_headers(record, media.settings)
        if downloads.not_modified(headers_in, headers):
            return _Answer(304, headers, None, False, media_id, principal)
        try:
            plan = downloads.body_plan(record, headers_in, media.settings, headers)
        except ContentError:  # a 416: the route renders the problem
            return None
        zero_copy = media.settings.sendfile and ZERO_COPY_SEND in (scope.get("extensions") or ())
        if not isinstance(plan, downloads.Span) or (
            plan.length > media.settings.read_chunk_bytes and not zero_copy
        ):
            return None
        return _Answer(plan.status, headers, plan, zero_copy, media_id, principal)

    async def _serve(
        self, scope: Scope, send: Send, media: MediaContext, answer: _Answer, started: float
    ) -> bool:
        """Send the answer; False (nothing sent) if its bytes cannot be read."""
        span = answer.span
        body = b""
        file: int | None = None  # sent with sendfile, closed here once sent
        if span is not None and span.length and scope["method"] == "GET":
            if answer.zero_copy:
                file = await media.blobs.open_if_cached(answer.media_id, span.start, span.stop)
            if file is None:
                if span.length > media.settings.read_chunk_bytes:
                    return False  # not in memory: the route streams it from disk
                try:
                    body = await media.blobs.read_at_once(answer.media_id, span.start, span.stop)
                except (ContentError, OSError):
                    return False  # the route reads again and renders the error
        try:
            await self._send(scope, send, answer, body, file, started)
        finally:
            if file is not None:
                os.close(file)
        return True

    async def _send(
        self, scope: Scope, send: Send, answer: _Answer, body: bytes, file: int | None, started: float
    ) -> None:
        span = answer.span
        headers = encode_headers(answer.headers.items())
        if span is not None:
            headers.append((b"content-length", str(span.length).encode("ascii")))
        # Counted and logged before sending, as the route's after-request hook does.
        metrics = self._ctx.metrics
        metrics.media_fast_answers.inc()
        if body:
            metrics.media_bytes_out.inc(len(body))
        elif file is not None and span is not None:
            metrics.media_bytes_out.inc(span.length)
            metrics.media_zero_copy_bytes.inc(span.length)
        trace(self._ctx, scope, ROUTE, answer.status, answer.principal, started)
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        if file is not None and span is not None:
            await send({"type": ZERO_COPY_SEND, "file": file, "offset": span.start, "count": span.length})
        else:
            await send({"type": "http.response.body", "body": body})
