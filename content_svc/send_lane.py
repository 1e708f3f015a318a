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
from content_svc.errors import ContentError
from content_svc.fast_path import (
    JSON_REQUEST_HEADERS,
    JsonLane,
    Receive,
    Scope,
    Send,
)
from content_svc.media import records
from content_svc.schemas import IDEMPOTENCY_KEY_MAX_CHARS, IDEMPOTENCY_KEY_PATTERN, MAX_ID
from pingpull.db.engine import DatabaseUnavailable

ROUTE: Final = "/v1/conversations/<id:conversation_id>/messages"  # the Quart rule, for metrics and logs
_PATH: Final = re.compile(r"/v1/conversations/([1-9][0-9]{0,18})/messages")
_WANTED: Final = JSON_REQUEST_HEADERS | {b"idempotency-key"}
_KEY: Final = re.compile(IDEMPOTENCY_KEY_PATTERN)


def message_fields(parsed: dict[str, Any] | None) -> tuple[str, list[str]] | None:
    """(body, media) of a JSON object the `SendMessage` schema takes as it is; None otherwise."""
    if parsed is None or "body" not in parsed or not parsed.keys() <= {"body", "media"}:
        return None
    text, media = parsed["body"], parsed.get("media", [])
    if type(text) is not str or type(media) is not list:
        return None
    if not all(type(m) is str and records.looks_like_media_id(m) for m in media):
        return None
    return text, media


class SendFastLane(JsonLane):
    """ASGI middleware: takes the sends it can decide, passes every other request on."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            matched = _PATH.fullmatch(scope["path"])
            if matched is not None and int(matched[1]) <= MAX_ID:
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
        request = await self.read_json_request(scope, receive, _WANTED, max_bytes)
        if request is None:
            return receive
        key = request.headers.get("idempotency-key", "")
        fields = message_fields(request.body)
        if fields is None or len(key) > IDEMPOTENCY_KEY_MAX_CHARS or not _KEY.fullmatch(key):
            return request.replay
        principal, replay = request.principal, request.replay
        try:
            result = await sending.send(self._ctx, principal, conversation_id, key, *fields)
        except ContentError as error:
            await self.reply(scope, send, ROUTE, principal, started, self.problem_reply(error))
            return None
        except DatabaseUnavailable:
            return replay
        replayed = ("Idempotent-Replayed", sending.replayed_header(result))
        await self.reply(
            scope, send, ROUTE, principal, started, self.json_reply(201, result.message.as_json(), replayed)
        )
        return None
