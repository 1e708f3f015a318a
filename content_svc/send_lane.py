"""The send fast lane: `POST /v1/conversations/{id}/messages` answered in front of Quart for a device
it already knows.

Every message is one send, and through Quart a send paid for three pydantic validations (headers, body,
answer) and the framework around them. When the token was verified before by this process, the device
was seen recently and the request is plainly well-formed (`application/json` with a Content-Length, one
`Idempotency-Key` of the schema's form, a body that is `{"body": <string>, "media"?: [<media ids>]}` and
nothing else), the lane calls the same `sending.send` as the route and renders its answer, or its
refusal, with the app's own JSON provider; `tests/integration/test_send_lane.py` compares both paths
byte for byte on the wire. Anything else goes to the route with the body replayed. A send that fails on
the database is handed to the route too: it runs again under the same Idempotency-Key, which never
makes a duplicate.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

from content_svc import sending
from content_svc.auth import DeviceCache, Principal
from content_svc.context import ContentContext
from content_svc.errors import PROBLEM_CONTENT_TYPE, ContentError
from content_svc.fast_path import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    declared_length,
    encode_headers,
    json_object,
    known_principal,
    read_small_body,
    single_headers,
    trace,
)
from pingpull.db.engine import DatabaseUnavailable

ROUTE: Final = "/v1/conversations/<id:conversation_id>/messages"  # the Quart rule, for metrics and logs
_PATH: Final = re.compile(r"/v1/conversations/([1-9][0-9]{0,18})/messages")
_MAX_ID: Final = 2**63 - 1
_WANTED: Final = frozenset(
    {b"authorization", b"content-type", b"content-length", b"expect", b"idempotency-key"}
)
_KEY: Final = re.compile(r"[\x21-\x7e]{1,128}")  # SendHeaders.idempotency_key
_MEDIA_ID: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")  # schemas.MediaId


def message_fields(parsed: dict[str, Any] | None) -> tuple[str, list[str]] | None:
    """(body, media) of a JSON object the `SendMessage` schema takes as it is; None otherwise."""
    if parsed is None or "body" not in parsed or not parsed.keys() <= {"body", "media"}:
        return None
    text, media = parsed["body"], parsed.get("media", [])
    if type(text) is not str or type(media) is not list:
        return None
    if not all(type(m) is str and _MEDIA_ID.fullmatch(m) for m in media):
        return None
    return text, media


class SendFastLane:
    """ASGI middleware: takes the sends it can decide, passes every other request to `app`."""

    def __init__(self, app: ASGIApp, ctx: ContentContext, devices: DeviceCache, json: Any) -> None:
        self._app = app
        self._ctx = ctx
        self._devices = devices
        self._json = json  # the Quart app's JSON provider: the same bytes as the route's answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            matched = _PATH.fullmatch(scope["path"])
            if matched is not None and int(matched[1]) <= _MAX_ID:
                replay = await self._send(scope, receive, send, int(matched[1]), time.perf_counter())
                if replay is None:
                    return
                receive = replay
        await self._app(scope, receive, send)

    async def _send(
        self, scope: Scope, receive: Receive, send: Send, conversation_id: int, started: float
    ) -> Receive | None:
        """Take the send (None: answered), or hand back a `receive` that replays what was read."""
        max_bytes = self._ctx.settings.max_request_body_bytes
        values = single_headers(scope, _WANTED)
        if values is None or declared_length(values, max_bytes) is None:
            return receive
        key = values.get("idempotency-key", "")
        if not _KEY.fullmatch(key):
            return receive
        principal = known_principal(self._ctx, self._devices, values.get("authorization", ""))
        if principal is None:
            return receive
        body, replay = await read_small_body(receive, max_bytes)
        fields = message_fields(json_object(body)) if body is not None else None
        if fields is None:
            return replay
        try:
            result = await sending.send(self._ctx, principal, conversation_id, key, *fields)
        except ContentError as error:
            await self._answer(scope, send, principal, started, *_problem(self._json, error))
            return None
        except DatabaseUnavailable:
            return replay
        answer = (self._json.dumps(result.message.as_json(), separators=(",", ":")) + "\n").encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Idempotent-Replayed", sending.replayed_header(result)),
        ]
        await self._answer(scope, send, principal, started, 201, headers, answer)
        return None

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        principal: Principal,
        started: float,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> None:
        self._ctx.metrics.fast_lane_answers.labels(ROUTE).inc()
        trace(self._ctx, scope, ROUTE, status, principal, started)
        fields = encode_headers(headers)
        fields.insert(1, (b"content-length", str(len(body)).encode("ascii")))
        await send({"type": "http.response.start", "status": status, "headers": fields})
        await send({"type": "http.response.body", "body": body})


def _problem(json: Any, error: ContentError) -> tuple[int, list[tuple[str, str]], bytes]:
    """A refusal as the app's error handler renders it (`app._problem`)."""
    body = json.dumps(error.problem()).encode()
    return error.status, [("Content-Type", PROBLEM_CONTENT_TYPE), *error.headers.items()], body
