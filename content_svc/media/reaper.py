"""Expired resumable uploads: their rows go, then their bytes (files, S3 multipart uploads, tails).

Any number of content replicas may run this; each row is taken by one (a conditional DELETE) before
its bytes are dropped, so two reapers never fight over one upload. An S3 multipart upload whose
row was never written (a replica died between CreateMultipartUpload and recording it) is beyond
this loop's sight: docs/operations.md asks for the bucket lifecycle rule AbortIncompleteMultipartUpload.
"""

from __future__ import annotations

import logging

import trio

from content_svc.context import ContentContext, MediaContext
from content_svc.media import records
from pingpull import logs

log = logging.getLogger("pingpull.content.media")

BATCH = 100


async def reap_expired_uploads(ctx: ContentContext, media: MediaContext) -> int:
    """One pass: remove every upload expired by now. Returns how many went."""
    reaped = 0
    while True:
        taken = await ctx.database.transaction(records.take_expired_uploads, ctx.clock_ms(), BATCH)
        for record in taken:
            if not record.complete:
                with trio.CancelScope(shield=True):
                    await media.blobs.discard_upload(record.state)
        reaped += len(taken)
        ctx.metrics.uploads_reaped.inc(len(taken))
        if len(taken) < BATCH:
            return reaped


async def run_upload_reaper(ctx: ContentContext) -> None:
    media = ctx.media
    if media is None:
        return
    while True:
        await trio.sleep(media.settings.reap_interval_s)
        try:
            reaped = await reap_expired_uploads(ctx, media)
        except Exception:  # a failed pass (database or storage down) is retried on the next one
            log.exception("reaping expired uploads failed")
            continue
        if reaped:
            logs.event(log, "uploads_reaped", count=reaped)
