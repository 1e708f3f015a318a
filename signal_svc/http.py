"""The gateway's HTTP edge, sans-IO: request heads in (parsed by h11), routes and plain responses out.

Everything here is pure: bytes and h11 events in, decisions and bytes out. The trio side
(`connection.py`) reads the socket and calls these. Keeping the request handling pure is what lets
hypothesis throw arbitrary heads at it without a socket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

from signal_svc.errors import HttpRefusal


class Route(Enum):
    WEBSOCKET = "ws"
    SSE = "sse"
    POLL = "poll"
    HEALTHZ = "healthz"
    READYZ = "readyz"
    METRICS = "metrics"


_PATHS = {
    "/v1/signal": Route.WEBSOCKET,
    "/v1/signal/sse": Route.SSE,
    "/v1/signal/poll": Route.POLL,
    "/healthz": Route.HEALTHZ,
    "/readyz": Route.READYZ,
    "/metrics": Route.METRICS,
}
_MAX_QUERY_PARAMS = 16


@dataclass(frozen=True, slots=True)
class SignalRequest:
    route: Route
    path: str
    query: dict[str, str]
    headers: list[tuple[bytes, bytes]]
    http_version: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_has_token(self, name: bytes, token: bytes) -> bool:
        """The comma-separated header has `token` (any case), e.g. Connection: keep-alive, Upgrade."""
        return any(
            part.strip().lower() == token
            for key, value in self.headers
            if key == name
            for part in value.split(b",")
        )


class HeadParser:
    """Incremental request-head parser: feed bytes, get a routed request once the head is complete.

    h11 does the HTTP parsing (and bounds the head at `max_head_bytes`, answering 431 beyond it);
    this adds the gateway's rules: GET only, no body, known paths."""

    def __init__(self, max_head_bytes: int) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self._max_head_bytes = max_head_bytes
        self._fed = 0

    def feed(self, data: bytes) -> SignalRequest | None:
        """None: need more bytes. Raises HttpRefusal for anything the gateway will not serve."""
        if data:
            self._fed += len(data)
            self._h11.receive_data(data)
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            slug = "headers-too-large" if status == 431 else "bad-request"
            raise HttpRefusal(status, slug, f"malformed request: {exc}") from exc
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.Request):
            raise HttpRefusal(400, "bad-request", "unexpected data before the request")
        # h11 bounds only *incomplete* heads; a complete one that arrived in one piece is checked here.
        head_bytes = self._fed - len(self._h11.trailing_data[0])
        if head_bytes > self._max_head_bytes:
            raise HttpRefusal(
                431, "headers-too-large", f"the request head is over {self._max_head_bytes} bytes"
            )
        for name, value in event.headers:
            if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
                raise HttpRefusal(400, "bad-request", "requests here carry no body")
        return route_request(event)

    @property
    def unread(self) -> bytes:
        """Bytes received after the head (a pipelined request, or a client's first frames)."""
        data, _closed = self._h11.trailing_data
        return bytes(data)


def route_request(event: h11.Request) -> SignalRequest:
    """Validate a parsed request head and pick its route, or raise HttpRefusal."""
    try:
        target = event.target.decode("ascii")
    except UnicodeDecodeError as exc:
        raise HttpRefusal(400, "bad-request", "the request target is not ASCII") from exc
    parts = urlsplit(target)
    route = _PATHS.get(parts.path)
    if route is None:
        raise HttpRefusal(404, "not-found", f"no such path: {parts.path[:100]}")
    if event.method != b"GET":
        raise HttpRefusal(405, "method-not-allowed", "only GET is served here", headers=[(b"Allow", b"GET")])
    try:
        pairs = parse_qsl(
            parts.query, keep_blank_values=True, strict_parsing=False, max_num_fields=_MAX_QUERY_PARAMS
        )
    except ValueError as exc:
        raise HttpRefusal(400, "bad-request", "too many query parameters") from exc
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise HttpRefusal(400, "bad-request", f"query parameter {key!r} given twice")
        query[key] = value
    headers = [(name.lower(), value) for name, value in event.headers]
    return SignalRequest(route, parts.path, query, headers, event.http_version)


def bearer_token(request: SignalRequest) -> str:
    """The access token from `Authorization: Bearer` or, for browsers' WebSocket, `?access_token=`."""
    header = request.header(b"authorization")
    from_query = request.query.get("access_token")
    if header is not None:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise HttpRefusal(401, "unauthorized", "the Authorization header must use the Bearer scheme")
        if from_query is not None:
            raise HttpRefusal(400, "bad-request", "send the token in the header or the query, not both")
        try:
            return token.strip().decode("ascii")
        except UnicodeDecodeError as exc:
            raise HttpRefusal(401, "unauthorized", "malformed token") from exc
    if from_query:
        return from_query
    raise HttpRefusal(401, "unauthorized", "send Authorization: Bearer <token> or ?access_token=")


def int_param(request: SignalRequest, name: str, *, default: int | None, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise HttpRefusal(400, "bad-request", f"query parameter {name!r} is required")
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20:
        raise HttpRefusal(400, "bad-request", f"{name} must be a non-negative integer")
    value = int(raw)
    if not low <= value <= high:
        raise HttpRefusal(400, "bad-request", f"{name} must be within {low}..{high}")
    return value


# --- responses -------------------------------------------------------------------------------------


def response_bytes(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    headers: list[tuple[bytes, bytes]] | None = None,
    keep_alive: bool = False,
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response, serialised by h11 (never hand-rolled status lines)."""
    conn = _server_ready_to_respond()
    all_headers = [
        (b"Content-Type", content_type),
        (b"Content-Length", str(len(body)).encode()),
        (b"Cache-Control", b"no-store"),
        *(headers or []),
    ]
    if not keep_alive:
        all_headers.append((b"Connection", b"close"))
    out = conn.send(h11.Response(status_code=status, headers=all_headers))
    assert out is not None
    if not head_only and body:
        data = conn.send(h11.Data(data=body))
        assert data is not None
        out += data
    return out


def problem_bytes(refusal: HttpRefusal, *, keep_alive: bool = False) -> bytes:
    body: dict[str, Any] = {
        "type": f"https://pingpull.dev/problems/{refusal.slug}",
        "title": refusal.slug.replace("-", " "),
        "status": refusal.status,
        "detail": refusal.detail,
    }
    return response_bytes(
        refusal.status,
        json.dumps(body, separators=(",", ":")).encode(),
        content_type=b"application/problem+json",
        headers=refusal.headers,
        keep_alive=keep_alive,
    )


def stream_head_bytes(content_type: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
    """The head of an endless chunked response (SSE)."""
    conn = _server_ready_to_respond()
    out = conn.send(
        h11.Response(
            status_code=200,
            headers=[
                (b"Content-Type", content_type),
                (b"Cache-Control", b"no-store"),
                (b"Transfer-Encoding", b"chunked"),
                *extra,
            ],
        )
    )
    assert out is not None
    return out


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk; pre-encoded once per event and shared by every SSE connection."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def _server_ready_to_respond() -> h11.Connection:
    # A throwaway h11 server connection that has "received" a minimal request, so it will serialise
    # a response. Cheap (microseconds), and keeps header validation and framing in h11's hands.
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    return conn
