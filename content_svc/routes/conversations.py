"""Conversations, their members, and messages: the send path and history pages."""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import validate_headers, validate_querystring, validate_request, validate_response

from content_svc import messaging, sending, store
from content_svc.app import context, no_content, principal
from content_svc.openapi import answers_without_body
from content_svc.schemas import (
    ConversationList,
    ConversationOut,
    CreateConversation,
    HistoryQuery,
    ListQuery,
    MessageOut,
    MessagePage,
    SendHeaders,
    SendMessage,
)

blueprint = Blueprint("conversations", __name__)


@blueprint.post("/v1/conversations")
@validate_request(CreateConversation)
@validate_response(ConversationOut, 201)
@validate_response(ConversationOut, 200)
async def create(data: CreateConversation) -> tuple[dict[str, object], int]:
    """Create a conversation. Two members and no title: the pair's direct conversation (200 if it exists)."""
    ctx = context()
    who = await principal()
    conversation, created = await ctx.database.transaction(
        store.create_conversation,
        who.user_id,
        list(data.members),
        data.title,
        ctx.settings.max_members_per_conversation,
        ctx.clock_ms(),
    )
    return conversation.as_json(), 201 if created else 200


@blueprint.get("/v1/conversations")
@validate_querystring(ListQuery)
@validate_response(ConversationList, 200)
async def list_mine(query_args: ListQuery) -> dict[str, object]:
    """The caller's conversations in id order, paged with `after`."""
    ctx = context()
    who = await principal()
    limit = min(query_args.limit or ctx.settings.default_page_items, ctx.settings.max_page_items)
    found = await ctx.database.read(store.list_conversations, who.user_id, query_args.after, limit)
    return {
        "items": [c.as_json() for c in found],
        "next_after": found[-1].id if len(found) == limit else None,
    }


@blueprint.get("/v1/conversations/<id:conversation_id>")
@validate_response(ConversationOut, 200)
async def get_one(conversation_id: int) -> dict[str, object]:
    ctx = context()
    who = await principal()
    conversation = await ctx.database.read(store.get_conversation, who.user_id, conversation_id)
    return conversation.as_json()


@blueprint.post("/v1/conversations/<id:conversation_id>/members/<id:user_id>")
@answers_without_body(201, 204)
async def add_member(conversation_id: int, user_id: int) -> Response:
    """An admin adds a member to a group; they see messages from now on, not the history before."""
    ctx = context()
    who = await principal()
    added = await ctx.database.transaction(
        store.add_member,
        who.user_id,
        conversation_id,
        user_id,
        ctx.settings.max_members_per_conversation,
        ctx.clock_ms(),
    )
    return no_content(201 if added else 204)


@blueprint.delete("/v1/conversations/<id:conversation_id>/members/<id:user_id>")
@answers_without_body(204)
async def remove_member(conversation_id: int, user_id: int) -> Response:
    """An admin removes a member, or a member leaves; they stop receiving and reading new messages."""
    ctx = context()
    who = await principal()
    await ctx.database.transaction(store.remove_member, who.user_id, conversation_id, user_id)
    return no_content(204)


@blueprint.get("/v1/conversations/<id:conversation_id>/messages")
@validate_querystring(HistoryQuery)
@validate_response(MessagePage, 200)
async def history(conversation_id: int, query_args: HistoryQuery) -> dict[str, object]:
    """Newest first; pass `next_before` as `before` for older pages."""
    ctx = context()
    who = await principal()
    limit = min(query_args.limit or ctx.settings.default_page_items, ctx.settings.max_page_items)
    page = await ctx.database.read(messaging.history, who.user_id, conversation_id, query_args.before, limit)
    return {"items": [m.as_json() for m in page], "next_before": page[-1].id if len(page) == limit else None}


@blueprint.post("/v1/conversations/<id:conversation_id>/messages")
@validate_headers(SendHeaders)
@validate_request(SendMessage)
@validate_response(MessageOut, 201)
async def send(
    conversation_id: int, data: SendMessage, headers: SendHeaders
) -> tuple[dict[str, object], int, dict[str, str]]:
    """Send a message. The same Idempotency-Key again returns the original message, never a duplicate."""
    ctx = context()
    who = await principal()
    result = await sending.send(ctx, who, conversation_id, headers.idempotency_key, data.body, data.media)
    return result.message.as_json(), 201, {"Idempotent-Replayed": sending.replayed_header(result)}
