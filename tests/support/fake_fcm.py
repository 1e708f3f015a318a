"""A fake FCM: the HTTP v1 send endpoint and Google's OAuth token endpoint, over HTTP/1.1 on loopback.

The FCM provider is tested through pyfcm, requests and google-auth doing real HTTP, never against a
mocked library call. This is a small h11 server on trio sockets (HTTP, not HTTPS: pyfcm takes any
base URL and google-auth any ``token_uri``, so TLS would test nothing of ours). It implements:

* ``POST /token``: the JWT-bearer grant google-auth's service-account credentials make. The
  assertion is verified (RS256 with the service account's public key, ``iss`` = its email, ``aud``
  = Google's token URL, the firebase.messaging scope); the answer is
  ``{"access_token", "expires_in", "token_type": "Bearer"}``.
* ``POST /v1/projects/<project>/messages:send``: 401 ``UNAUTHENTICATED`` without a token this fake
  issued, 200 ``{"name": "projects/<p>/messages/<id>"}``, or a scripted error in FCM's v1 shape:
  ``{"error": {"code", "message", "status", "details": [{"@type": "...FcmError", "errorCode"}]}}``,
  with ``Retry-After`` where scripted.

Answers are scripted per registration token (consumed in order, then 200); every request is
recorded, and so is every TCP connection, so connection reuse is observable.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
import jwt
import trio

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True, slots=True)
class FcmReply:
    """One scripted answer; ``action="close"`` drops the connection instead of answering."""

    status: int = 200
    error_status: str = ""  # google.rpc status name, e.g. "NOT_FOUND"
    error_code: str = ""  # FcmError errorCode, e.g. "UNREGISTERED"
    message: str = ""
    field_violation: str = ""  # google.rpc.BadRequest field, e.g. "message.token"
    headers: tuple[tuple[str, str], ...] = ()
    action: Literal["reply", "close"] = "reply"

    @classmethod
    def unregistered(cls) -> FcmReply:
        return cls(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.")

    @classmethod
    def invalid_token(cls) -> FcmReply:
        # What FCM answers today for a malformed or foreign registration token.
        return cls(
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
        )

    @classmethod
    def invalid_argument(
        cls, field_name: str, message: str = "Request contains an invalid argument."
    ) -> FcmReply:
        return cls(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", message, field_violation=field_name)

    @classmethod
    def quota_exceeded(cls, retry_after: str | None = None) -> FcmReply:
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return cls(
            429,
            "RESOURCE_EXHAUSTED",
            "QUOTA_EXCEEDED",
            "Quota exceeded for quota metric 'Send requests'.",
            headers=headers,
        )

    @classmethod
    def internal(cls) -> FcmReply:
        return cls(500, "INTERNAL", "INTERNAL", "Internal error encountered.")

    @classmethod
    def unavailable(cls, retry_after: str | None = None) -> FcmReply:
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return cls(
            503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable.", headers=headers
        )

    @classmethod
    def sender_id_mismatch(cls) -> FcmReply:
        return cls(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch")

    def body(self) -> dict[str, Any]:
        details: list[dict[str, Any]] = []
        if self.error_code:
            details.append({"@type": FCM_ERROR_TYPE, "errorCode": self.error_code})
        if self.field_violation:
            violation = {"field": self.field_violation, "description": self.message}
            details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": [violation]})
        error: dict[str, Any] = {"code": self.status, "message": self.message, "status": self.error_status}
        if details:
            error["details"] = details
        return {"error": error}


@dataclass(frozen=True, slots=True)
class FcmRecord:
    """One messages:send request as the fake received it."""

    connection: int
    path: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]

    @property
    def message(self) -> Mapping[str, Any]:
        message: Mapping[str, Any] = self.body.get("message", {})
        return message

    @property
    def token(self) -> str:
        return str(self.message.get("token", ""))

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    connection: int
    form: Mapping[str, str]
    claims: Mapping[str, Any] | None  # the verified assertion, None if it did not verify


@dataclass
class FakeFcm:
    """Open it with `open_fake_fcm`. Point pyfcm at ``endpoint_base`` and the service account's
    ``token_uri`` at ``token_uri``."""

    project_id: str
    service_account_email: str
    service_account_public_key: Any
    token_ttl_s: int = 3600
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[FcmRecord] = field(default_factory=list)
    token_requests: list[TokenRecord] = field(default_factory=list)
    connections: int = 0
    _script: dict[str, deque[FcmReply]] = field(default_factory=dict)
    _issued: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint_base(self) -> str:
        return f"{self.base_url}/v1/projects"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def script(self, token: str, *replies: FcmReply) -> None:
        """Answer the next sends to ``token`` with ``replies`` in order, then 200."""
        self._script.setdefault(token, deque()).extend(replies)

    def revoke_tokens(self) -> None:
        """Forget every access token issued, as if they had expired server-side."""
        self._issued.clear()

    def for_token(self, token: str) -> list[FcmRecord]:
        return [record for record in self.messages if record.token == token]

    # ---------------------------------------------------------------------------------- serving

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        ident = self.connections
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                received = await self._read_request(conn, stream)
                if received is None:
                    return
                request, body = received
                status, headers, payload = self._route(ident, request, body)
                if status == 0:  # scripted "close"
                    return
                data = json.dumps(payload).encode()
                headers = [
                    *headers,
                    ("Content-Type", "application/json; charset=UTF-8"),
                    ("Content-Length", str(len(data))),
                ]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                await stream.send_all(conn.send(h11.Data(data=data)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _read_request(
        conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.SEND_BODY:
                    return None
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    def _route(
        self, ident: int, request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], dict[str, Any]]:
        path = request.target.decode()
        headers = {name.decode().lower(): value.decode() for name, value in request.headers}
        if request.method != b"POST":
            return 405, [], {"error": {"code": 405, "status": "METHOD_NOT_ALLOWED"}}
        if path == "/token":
            return self._token(ident, body)
        prefix, suffix = "/v1/projects/", "/messages:send"
        if path.startswith(prefix) and path.endswith(suffix):
            return self._send(ident, path, path[len(prefix) : -len(suffix)], headers, body)
        return 404, [], {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}}

    def _token(self, ident: int, body: bytes) -> tuple[int, list[tuple[str, str]], dict[str, Any]]:
        form = dict(urllib.parse.parse_qsl(body.decode()))
        claims: dict[str, Any] | None
        try:
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                raise jwt.InvalidTokenError("unsupported grant_type")
            claims = jwt.decode(
                form.get("assertion", ""),
                self.service_account_public_key,
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                issuer=self.service_account_email,
                options={"require": ["iat", "exp", "iss", "aud"]},
            )
            if FCM_SCOPE not in str(claims.get("scope", "")).split():
                raise jwt.InvalidTokenError("missing the firebase.messaging scope")
        except jwt.PyJWTError as exc:
            self.token_requests.append(TokenRecord(ident, form, None))
            return 400, [], {"error": "invalid_grant", "error_description": str(exc)}
        self.token_requests.append(TokenRecord(ident, form, claims))
        access_token = f"ya29.fake-{len(self.token_requests)}"
        self._issued.add(access_token)
        return 200, [], {"access_token": access_token, "expires_in": self.token_ttl_s, "token_type": "Bearer"}

    def _send(
        self, ident: int, path: str, project: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], dict[str, Any]]:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
        record = FcmRecord(ident, path, headers, parsed)
        self.messages.append(record)
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self._issued:
            unauthenticated = FcmReply(
                401,
                "UNAUTHENTICATED",
                "",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            )
            return (
                401,
                [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')],
                unauthenticated.body(),
            )
        if project != self.project_id:
            return 403, [], FcmReply(403, "PERMISSION_DENIED", "", "Permission denied.").body()
        if not isinstance(parsed, dict) or not record.token:
            return 400, [], FcmReply.invalid_argument("message", "Invalid JSON payload received.").body()
        queue = self._script.get(record.token)
        reply = queue.popleft() if queue else FcmReply()
        if reply.action == "close":
            return 0, [], {}
        if reply.status == 200:
            return 200, [], {"name": f"projects/{self.project_id}/messages/0:{next(self._ids)}"}
        return reply.status, list(reply.headers), reply.body()


@asynccontextmanager
async def open_fake_fcm(
    project_id: str, service_account_email: str, service_account_public_key: Any, **options: Any
) -> AsyncIterator[FakeFcm]:
    """Serve a `FakeFcm` on a free loopback port for the duration of the block."""
    fake = FakeFcm(project_id, service_account_email, service_account_public_key, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
