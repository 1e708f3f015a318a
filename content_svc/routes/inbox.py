"""The per-user inbox pulled by cursor, and the per-device ack."""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import validate_querystring, validate_request, validate_response

from content_svc import messaging
from content_svc.app import context, no_content, principal
from content_svc.openapi import answers_without_body
from content_svc.schemas import Ack, InboxPage, ListQuery

blueprint = Blueprint("inbox", __name__)


@blueprint.get("/v1/inbox")
@validate_querystring(ListQuery)
@validate_response(InboxPage, 200)
async def pull(query_args: ListQuery) -> dict[str, object]:
    """Entries with seq > `after`, in seq order, and the current head. Pull until an item's seq = head."""
    ctx = context()
    who = await principal()
    limit = messaging.page_limit(query_args.limit, ctx.settings)
    head, entries = await ctx.database.read(messaging.pull_inbox, who.user_id, query_args.after, limit)
    return messaging.inbox_page(head, entries)


@blueprint.post("/v1/inbox/ack")
@answers_without_body(204)
@validate_request(Ack)
async def ack(data: Ack) -> Response:
    """Move this device's cursor forward to `seq`; acking an older seq changes nothing."""
    ctx = context()
    who = await principal()
    await ctx.database.transaction(messaging.ack, who.user_id, who.device_id, data.seq, ctx.clock_ms())
    return no_content(204)
