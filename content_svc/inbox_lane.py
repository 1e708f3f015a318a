"""The inbox fast lane: `GET /v1/inbox` answered in front of Quart for a device it already knows.

The inbox pull is the request a chat backend serves most: every signal is followed by one, and a
device on short polling sends one every few seconds whether anything is new or not. Through Quart a
pull paid for the framework around it (contexts, routing, hooks, quart-schema's validation of the
query and of the answer) about as much as for the database read itself. When the token was verified
before by this process, the device was seen recently and the query is in its canonical form
(`after` and `limit` as plain decimal numbers, each at most once, nothing else), the lane runs the
same unit of work (`messaging.pull_inbox`), builds the same page (`messaging.inbox_page`) and
renders it with the app's own JSON provider. Anything else goes to the route, which answers it,
problem+json included; so does a read that fails (the route reads again and renders the error).
"""

from __future__ import annotations

import time
from typing import Any, Final

from content_svc import messaging
from content_svc.auth import DeviceCache, Principal
from content_svc.context import ContentContext
from content_svc.errors import ContentError
from content_svc.fast_path import ASGIApp, Receive, Scope, Send, known_principal, single_headers, trace
from pingpull.db.engine import DatabaseUnavailable

ROUTE: Final = "/v1/inbox"
_WANTED: Final = frozenset({b"authorization"})
_MAX_SEQ: Final = 2**63 - 1
_MAX_LIMIT: Final = 10_000  # ListQuery's bound: a larger limit is a 400 from the route


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
        if name == b"after" and number <= _MAX_SEQ:
            after = number
        elif name == b"limit" and 1 <= number <= _MAX_LIMIT:
            limit = number
        else:
            return None
    return after, limit


class InboxFastLane:
    """ASGI middleware: answers inbox pulls it can decide, passes every other request to `app`."""

    def __init__(self, app: ASGIApp, ctx: ContentContext, devices: DeviceCache, json: Any) -> None:
        self._app = app
        self._ctx = ctx
        self._devices = devices
        self._json = json  # the Quart app's JSON provider: the same bytes as the route's answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"] == ROUTE
            and await self._pull(scope, send, time.perf_counter())
        ):
            return
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
        await self._send_json(scope, send, messaging.inbox_page(head, entries), principal, started)
        return True

    async def _send_json(
        self, scope: Scope, send: Send, page: dict[str, Any], principal: Principal, started: float
    ) -> None:
        body = (self._json.dumps(page, separators=(",", ":")) + "\n").encode()
        self._ctx.metrics.inbox_fast_answers.inc()
        trace(self._ctx, scope, ROUTE, 200, principal, started)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
