"""The inbox fast lane: `GET /v1/inbox` and `POST /v1/inbox/ack` answered in front of Quart for a
device it already knows.

The inbox pull is the request a chat backend serves most: every signal is followed by one, and a
device on short polling sends one every few seconds whether anything is new or not. Through Quart a
pull paid for the framework around it (contexts, routing, hooks, quart-schema's validation of the
query and of the answer) about as much as for the database read itself. When the token was verified
before by this process, the device was seen recently and the query is in its canonical form
(`after` and `limit` as plain decimal numbers, each at most once, nothing else), the lane runs the
same unit of work (`messaging.pull_inbox`), builds the same page (`messaging.inbox_page`) and
renders it with the app's own JSON provider. Anything else goes to the route, which answers it,
problem+json included; so does a read that fails (the route reads again and renders the error).

The ack that follows each pull is taken the same way when its body is exactly `{"seq": <integer>}` as
`application/json` with a Content-Length (the route's `Ack` schema, strict). The lane reads the body
first; if it then declines (another shape, a seq past the head, a database error) the route gets the
same body replayed, and runs the unit again: an ack is idempotent and one that failed changed nothing.
"""

from __future__ import annotations

import time
from typing import Any, Final

from content_svc import messaging
from content_svc.errors import ContentError
from content_svc.fast_path import (
    JSON_REQUEST_HEADERS,
    JsonLane,
    Receive,
    Reply,
    Scope,
    Send,
    known_principal,
    single_headers,
)
from content_svc.schemas import MAX_ID, MAX_PAGE_LIMIT
from pingpull.db.engine import DatabaseUnavailable

ROUTE: Final = "/v1/inbox"
ACK_ROUTE: Final = "/v1/inbox/ack"
_WANTED: Final = frozenset({b"authorization"})
_ACK_MAX_BODY_BYTES: Final = 256  # `{"seq": 9223372036854775807}` is 28


def parse_pull_query(query_string: bytes) -> tuple[int, int | None] | None:
    """(after, limit) from a canonical query string, None for anything the route must judge."""
    after, limit = 0, None
    seen: set[bytes] = set()
    for pair in query_string.split(b"&") if query_string else ():
        name, equals, value = pair.partition(b"=")
        if not equals or name in seen or not value.isdigit() or len(value) > 19:
            return None
        seen.add(name)
        number = int(value)
        if name == b"after" and number <= MAX_ID:
            after = number
        elif name == b"limit" and 1 <= number <= MAX_PAGE_LIMIT:
            limit = number
        else:
            return None
    return after, limit


class InboxFastLane(JsonLane):
    """ASGI middleware: answers inbox pulls and acks it can decide, passes every other request on."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            started = time.perf_counter()
            if scope["method"] == "GET" and scope["path"] == ROUTE:
                if await self._pull(scope, send, started):
                    return
            elif scope["method"] == "POST" and scope["path"] == ACK_ROUTE:
                replay = await self._ack(scope, receive, send, started)
                if replay is None:
                    return
                receive = replay
        await self._app(scope, receive, send)

    async def _pull(self, scope: Scope, send: Send, started: float) -> bool:
        """Answer the pull; False (nothing sent) if the route must."""
        query = parse_pull_query(scope["query_string"])
        values = single_headers(scope, _WANTED)
        if query is None or values is None:
            return False
        principal = known_principal(self._ctx, self._devices, values.get("authorization", ""))
        if principal is None:
            return False
        after, asked = query
        limit = messaging.page_limit(asked, self._ctx.settings)
        try:
            head, entries = await self._ctx.database.read(
                messaging.pull_inbox, principal.user_id, after, limit
            )
        except (ContentError, DatabaseUnavailable):
            return False
        page = self.json_reply(200, messaging.inbox_page(head, entries))
        await self.reply(scope, send, ROUTE, principal, started, page)
        return True

    async def _ack(self, scope: Scope, receive: Receive, send: Send, started: float) -> Receive | None:
        """Take the ack (None: answered), or hand back a `receive` that replays what was read."""
        request = await self.read_json_request(scope, receive, JSON_REQUEST_HEADERS, _ACK_MAX_BODY_BYTES)
        if request is None:
            return receive
        seq = _ack_seq(request.body)
        if seq is None:
            return request.replay
        principal, replay = request.principal, request.replay
        try:
            await self._ctx.database.transaction(
                messaging.ack, principal.user_id, principal.device_id, seq, self._ctx.clock_ms()
            )
        except (ContentError, DatabaseUnavailable):
            return replay
        await self.reply(scope, send, ACK_ROUTE, principal, started, Reply(204, []))  # as `app.no_content`
        return None


def _ack_seq(parsed: dict[str, Any] | None) -> int | None:
    """The seq of a body that is exactly `{"seq": <integer in range>}`; None for the route to judge."""
    if parsed is None or parsed.keys() != {"seq"}:
        return None
    seq = parsed["seq"]
    if type(seq) is not int or not 0 <= seq <= MAX_ID:  # strict: no bool, no float
        return None
    return seq
