"""What the fast lanes in front of Quart share: the ASGI types, the request's few headers, the
device a remembered token belongs to, and the trace of an answer.

A lane answers a request on the ASGI interface only when memory already decides everything the route
would (the token was verified before by this process, the device was seen recently, the input is in
its one canonical form); anything else goes to the Quart app untouched, which answers it. The routes
and the lanes take their decisions from the same functions, and a parity test per lane compares their
answers byte for byte on the wire. docs/decisions/0005-media-fast-lane.md has the reasoning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from content_svc.auth import DeviceCache, Principal, parse_bearer
from content_svc.context import ContentContext
from content_svc.errors import ContentError
from content_svc.observe import observe_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# The app behind a lane (Quart's, typed with its own ASGI TypedDicts).
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def single_headers(scope: Scope, wanted: frozenset[bytes]) -> dict[str, str] | None:
    """The `wanted` request headers by lower-case name; None if one of them comes twice (the route
    decides what that means)."""
    values: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in wanted:
            key = name.decode("ascii")
            if key in values:
                return None
            values[key] = value.decode("latin-1")
    return values


def known_principal(ctx: ContentContext, devices: DeviceCache, authorization: str) -> Principal | None:
    """The device of a bearer token this process verified before and saw recently; None for anything
    the route must check (a new token, a bad one, a device not seen for a while)."""
    try:
        token = parse_bearer(authorization)
    except ContentError:
        return None
    claims = devices.recall(ctx.verifier, token)
    if claims is None or not devices.fresh((claims.user_id, claims.device_id)):
        return None
    return Principal(user_id=claims.user_id, device_id=claims.device_id)


def encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def trace(
    ctx: ContentContext, scope: Scope, route: str, status: int, principal: Principal, started: float
) -> None:
    """The metrics and request log line of an answer, as the route's after-request hook records them."""
    observe_request(
        ctx.metrics,
        method=scope["method"],
        route=route,
        path=scope["path"],
        status=status,
        elapsed_s=time.perf_counter() - started,
        principal=principal,
        http_version=scope["http_version"],
    )


async def read_small_body(receive: Receive, max_bytes: int) -> tuple[bytes | None, Receive]:
    """The request body if it ends within `max_bytes` (None if not, or the client left), and the
    `receive` the route must get if the lane declines: it replays what was read, then goes on."""
    read: list[Message] = []
    body = b""
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return None, _replaying(read, receive)  # a disconnect: the route sees it too
        body += message.get("body", b"")
        if len(body) > max_bytes:
            return None, _replaying(read, receive)
        if not message.get("more_body", False):
            return body, _replaying(read, receive)


def _replaying(read: list[Message], receive: Receive) -> Receive:
    pending = list(read)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def json_object(body: bytes) -> dict[str, Any] | None:
    """A JSON object read as the routes read bodies (UTF-8 only); None for anything else."""
    try:
        parsed = json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None
    return parsed if isinstance(parsed, dict) else None


def declared_length(values: dict[str, str], max_bytes: int) -> int | None:
    """The Content-Length of a JSON request the lane may read whole: `application/json`, no
    `Expect: 100-continue` to answer first, a length within `max_bytes`; None otherwise."""
    length = values.get("content-length", "")
    if (
        values.get("content-type", "").lower() != "application/json"
        or "expect" in values
        or not length.isdigit()
        or int(length) > max_bytes
    ):
        return None
    return int(length)
