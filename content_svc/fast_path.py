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
from dataclasses import dataclass
from typing import Any, Final

from content_svc.auth import DeviceCache, Principal, parse_bearer
from content_svc.context import ContentContext
from content_svc.errors import PROBLEM_CONTENT_TYPE, ContentError
from content_svc.observe import observe_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# The app behind a lane (Quart's, typed with its own ASGI TypedDicts).
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


# The headers `read_json_request` reads (`declared_length`, `known_principal`); a lane adds its own.
JSON_REQUEST_HEADERS: Final = frozenset({b"authorization", b"content-type", b"content-length", b"expect"})


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


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer a lane sends whole: status, header fields (Content-Length is added), body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class JsonRequest:
    """A small JSON request from a known device, read whole by a lane."""

    headers: dict[str, str]  # the lane's wanted headers, by lower-case name
    principal: Principal
    body: dict[str, Any] | None  # None: not a JSON object the lane takes (the route judges it)
    replay: Receive  # what the route gets if the lane declines: the body again, then the rest


class JsonLane:
    """Base of the lanes in front of the JSON API: the app behind them, and answers rendered and
    recorded as the Quart app renders and records its own."""

    def __init__(self, app: ASGIApp, ctx: ContentContext, devices: DeviceCache, json: Any) -> None:
        self._app = app
        self._ctx = ctx
        self._devices = devices
        self._json = json  # the Quart app's JSON provider: the same bytes as the routes' answers

    async def read_json_request(
        self, scope: Scope, receive: Receive, wanted: frozenset[bytes], max_bytes: int
    ) -> JsonRequest | None:
        """The request, read, if it is `application/json` of at most `max_bytes` from a device this
        process knows; None, with nothing read, for the route to take as it is. `wanted` holds
        `JSON_REQUEST_HEADERS` and whatever else the lane reads."""
        values = single_headers(scope, wanted)
        if values is None or declared_length(values, max_bytes) is None:
            return None
        principal = known_principal(self._ctx, self._devices, values.get("authorization", ""))
        if principal is None:
            return None
        body, replay = await read_small_body(receive, max_bytes)
        return JsonRequest(values, principal, json_object(body) if body is not None else None, replay)

    def json_reply(self, status: int, value: Any, *headers: tuple[str, str]) -> Reply:
        """As Quart answers a route's return value: compact JSON and a newline."""
        body = (self._json.dumps(value, separators=(",", ":")) + "\n").encode()
        return Reply(status, [("Content-Type", "application/json"), *headers], body)

    def problem_reply(self, error: ContentError) -> Reply:
        """As the app's error handler renders a refusal (`app._problem`)."""
        body = self._json.dumps(error.problem()).encode()
        return Reply(error.status, [("Content-Type", PROBLEM_CONTENT_TYPE), *error.headers.items()], body)

    async def reply(
        self, scope: Scope, send: Send, route: str, principal: Principal, started: float, reply: Reply
    ) -> None:
        self._ctx.metrics.fast_lane_answers.labels(route).inc()
        trace(self._ctx, scope, route, reply.status, principal, started)
        fields = encode_headers(reply.headers)
        if reply.status != 204:  # RFC 9110 §8.6: a 204 has no Content-Length
            fields.insert(min(1, len(fields)), (b"content-length", str(len(reply.body)).encode("ascii")))
        await send({"type": "http.response.start", "status": reply.status, "headers": fields})
        await send({"type": "http.response.body", "body": reply.body})
