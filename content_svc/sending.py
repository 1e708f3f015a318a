"""Sending a message, after the request has been read: the checks, the rate limit, the send
transaction, the signals. Shared by the route and the send fast lane, so both behave alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from content_svc import fanout, messaging
from content_svc.auth import Principal
from content_svc.context import ContentContext
from content_svc.errors import RateLimited, Unprocessable
from content_svc.messaging import SendResult


async def send(
    ctx: ContentContext,
    who: Principal,
    conversation_id: int,
    idempotency_key: str,
    body: str,
    media: Sequence[str],
) -> SendResult:
    """Commit the message (or find the original of a retry), then signal its recipients. Raises a
    `ContentError` for a message the service refuses; nothing is stored then."""
    limits = ctx.settings
    if len(body) > limits.max_message_body_chars:
        raise Unprocessable(f"the body may have at most {limits.max_message_body_chars} characters")
    if not body and not media:
        raise Unprocessable("a message needs a body or media")
    if len(media) > limits.max_media_per_message:
        raise Unprocessable(f"a message may carry at most {limits.max_media_per_message} media")
    wait_s = ctx.send_limiter.try_acquire(who.user_id)
    if wait_s > 0:
        ctx.metrics.rate_limited.labels("send").inc()
        raise RateLimited(wait_s, "sending too fast")
    result = await ctx.database.transaction(
        messaging.send_message,
        sender_id=who.user_id,
        sender_device_id=who.device_id,
        conversation_id=conversation_id,
        idempotency_key=idempotency_key,
        body=body,
        media=list(media),
        clock_ms=ctx.clock_ms,  # read inside the transaction, once the locks are held
        ack_grace_ms=int(limits.ack_grace_s * 1000),
    )
    if result.created:
        ctx.metrics.messages_sent.inc()
        await fanout.announce(ctx, result)
    else:
        ctx.metrics.idempotent_replays.inc()
    return result


def replayed_header(result: SendResult) -> str:
    """The `Idempotent-Replayed` answer header: true when the key had already been used."""
    return "false" if result.created else "true"
