"""One keep-alive HTTP/1.1 connection for the SDK's small JSON requests: h11 over a trio socket.

httpx is the SDK's general HTTP client (HTTP/2, streaming, redirects, any origin). For a device's
steady traffic (pull, ack, send: small JSON requests, one at a time, to one origin) its layers cost
more than the work: measured under trio against the content service, this session's client takes
0.38-0.53× of httpx's CPU per request (`python -m bench.client_costs`;
docs/decisions/0007-sdk-http1-session.md). On a phone that is battery; in `pingpull bench e2e`,
where the clients share two cores with the server, it was a quarter of the machine.

`Http1Session` has the part of `httpx.AsyncClient.request` that `ContentClient` uses, and answers
with an `Http1Response` that has the part of `httpx.Response` it reads. It holds one connection and
sends one request at a time (others wait their turn, in order):

* a connection the server closed while idle (keep-alive timeout, `Connection: close`) is noticed
  before the request is written, with a non-blocking peek, and replaced;
* if a reused connection breaks before any byte of the answer, the request is sent once more on a
  new connection when that is safe: the method is idempotent or the request carries an
  `Idempotency-Key` (Go's net/http follows the same rule);
* every failure (refused, reset, timeout, a malformed answer) closes the connection and raises the
  SDK's `TransportError`.
"""

from __future__ import annotations

import json as jsonlib
import select
import ssl
from collections.abc import AsyncIterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import h11
import trio

from pingpull.client.errors import TransportError

_REPLAYABLE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_USER_AGENT: Final = "pingpull-sdk"
_RECEIVE_BYTES: Final = 64 * 1024


class ResponseHeaders(Mapping[str, str]):
    """Header fields by case-insensitive name (a repeated field's values joined with ", ")."""

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self._fields: dict[str, str] = {}
        for name, value in fields:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            self._fields[key] = f"{self._fields[key]}, {text}" if key in self._fields else text

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


class Http1Response:
    def __init__(self, status_code: int, headers: ResponseHeaders, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class _Unanswered(Exception):
    """The connection broke before any byte of the answer arrived."""


class Http1Session:
    """`async with Http1Session("http://host:port") as http: ContentClient(http, token)`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._authority = parts.netloc.rsplit("@", 1)[-1]
        self._prefix = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        # For https:// only: one context may serve a mix of http:// and https:// sessions.
        self._ssl_context = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._headers = [("User-Agent", _USER_AGENT), *(headers or {}).items()]
        self._stream: trio.abc.Stream | None = None
        self._socket: trio.socket.SocketType | None = None
        self._h11 = h11.Connection(h11.CLIENT)
        self._lock = trio.StrictFIFOLock()
        self._closed = False

    async def __aenter__(self) -> Http1Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._drop()

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
    ) -> Http1Response:
        if isinstance(content, AsyncIterable):
            raise TransportError("Http1Session sends bodies held in memory; stream uploads with httpx")
        target = self._target(url, params)
        fields = [("Host", self._authority), *self._headers, *(headers or {}).items()]
        body = content or b""
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            fields.append(("Content-Type", "application/json"))
        if body or method in ("POST", "PUT", "PATCH"):
            fields.append(("Content-Length", str(len(body))))
        replayable = method in _REPLAYABLE_METHODS or any(k.lower() == "idempotency-key" for k, _ in fields)
        async with self._lock:
            if self._closed:
                raise TransportError("the session is closed")
            try:
                with trio.fail_after(self._timeout_s):
                    reused = await self._ensure_connection()
                    try:
                        return await self._exchange(method, target, fields, body)
                    except _Unanswered:
                        if not (reused and replayable):
                            raise
                        await self._drop()
                        await self._ensure_connection()
                        return await self._exchange(method, target, fields, body)
            except trio.TooSlowError:
                await self._drop()
                raise TransportError(f"{method} {target}: no answer within {self._timeout_s:g} s") from None
            except (_Unanswered, OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                await self._drop()
                raise TransportError(f"{method} {target}: {exc!r}") from exc

    def _target(self, url: str, params: Mapping[str, Any] | None) -> str:
        if "://" in url:
            parts = urlsplit(url)
            if (parts.scheme, parts.netloc.rsplit("@", 1)[-1]) != (self._scheme, self._authority):
                origin = f"{self._scheme}://{self._authority}"
                raise TransportError(f"Http1Session serves {origin} only, not {url}")
            path, query = parts.path, parts.query
        else:
            path, _, query = url.partition("?")
            path = self._prefix + path
        if params:
            query = "&".join(filter(None, (query, urlencode(params, doseq=True))))
        return f"{path or '/'}{'?' + query if query else ''}"

    async def _ensure_connection(self) -> bool:
        """True if the kept connection is reused, False if a new one was opened."""
        if self._stream is not None and self._h11.our_state is h11.IDLE and self._still_open():
            return True
        await self._drop()
        tcp = await trio.open_tcp_stream(self._host, self._port)  # TCP_NODELAY is trio's default
        stream: trio.abc.Stream = tcp
        if self._ssl_context is not None:
            tls = trio.SSLStream(tcp, self._ssl_context, server_hostname=self._host)
            await tls.do_handshake()
            stream = tls
        self._stream, self._socket = stream, tcp.socket
        self._h11 = h11.Connection(h11.CLIENT)
        return False

    def _still_open(self) -> bool:
        """False if the server has closed (or written to) the idle connection: peek without waiting.
        Bytes before a request can only be a farewell (a 408, or the end of the stream)."""
        assert self._socket is not None
        try:
            readable, _, _ = select.select([self._socket], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    async def _exchange(
        self, method: str, target: str, fields: list[tuple[str, str]], body: bytes
    ) -> Http1Response:
        stream, conn = self._stream, self._h11
        assert stream is not None
        request = h11.Request(method=method, target=target, headers=fields)
        out = conn.send(request) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        try:
            await stream.send_all(out)
        except (OSError, trio.BrokenResourceError) as exc:
            raise _Unanswered(repr(exc)) from exc
        answered = False
        status, head, chunks = 0, ResponseHeaders([]), []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                except (OSError, trio.BrokenResourceError) as exc:
                    if not answered:
                        raise _Unanswered(repr(exc)) from exc
                    raise
                if not data and not answered:
                    raise _Unanswered("the connection closed before the answer")
                answered = True
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Response):
                status, head = event.status_code, ResponseHeaders(list(event.headers))
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the connection closed in the middle of the answer")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:  # `Connection: close`, or an answer framed by the end of the connection
            await self._drop()
        return Http1Response(status, head, b"".join(chunks))

    async def _drop(self) -> None:
        stream, self._stream, self._socket = self._stream, None, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
