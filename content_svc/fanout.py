"""After commit: tell the recipients' devices, and make pushes due for devices nobody holds.

The message is already durable when this runs, so nothing here may fail the request: a bus that is
down costs latency (the push job fires after the ack grace), never a message.
"""

from __future__ import annotations

import logging

from content_svc import messaging
from content_svc.context import ContentContext
from content_svc.messaging import SendResult
from pingpull import logs, wire
from pingpull.bus import BusError, Publication

log = logging.getLogger("pingpull.content.fanout")


async def announce(ctx: ContentContext, result: SendResult) -> None:
    publications = [
        Publication(
            user_id=r.user_id,
            head=r.head,
            frame=wire.encode_new(r.head, result.message.id),
            device_ids=r.device_ids,
        )
        for r in result.recipients
    ]
    try:
        received = await ctx.bus.publish(publications)
    except BusError as exc:
        ctx.metrics.signals_published.labels("bus_error").inc(sum(len(p.device_ids) for p in publications))
        logs.event(
            log, "bus_publish_failed", level=logging.WARNING, message_id=result.message.id, error=str(exc)
        )
        return
    unreached = [
        device_id
        for r in result.recipients
        for device_id in r.pushable_device_ids
        if received.get(device_id, 0) == 0
    ]
    reached = sum(1 for n in received.values() if n > 0)
    ctx.metrics.signals_published.labels("received").inc(reached)
    ctx.metrics.signals_published.labels("no_receiver").inc(len(received) - reached)
    if unreached:
        await ctx.database.transaction(messaging.make_pushes_due, unreached, ctx.clock_ms())
        if ctx.on_push_due is not None:
            ctx.on_push_due()  # a worker in this process
        else:
            await ctx.bus.wake_push_workers()  # workers in other processes (Redis: one PUBLISH)
