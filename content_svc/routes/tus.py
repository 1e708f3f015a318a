"""Resumable uploads: tus 1.0 under /v1/uploads, so existing mobile tus clients work unchanged.

A PATCH appends its body at the upload's offset while holding the upload's lock (renewed while the
body streams, so a slow phone keeps it and a crashed replica's lock expires). What arrived is
recorded when the body ends, even if the client vanished half-way (tus: "store as much as
possible") - unless the request carried an Upload-Checksum, which can only be checked on the whole
chunk. When the last byte is recorded, the object is published, its size and sha256 verified, and
a `media` row with the upload's id is written: the id in the Location header is the media id.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets

import trio
from quart import Blueprint, Response, current_app, request
from quart_schema import security_scheme

from content_svc.app import context, principal
from content_svc.context import ContentContext, MediaContext
from content_svc.errors import InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from content_svc.media import records, tus
from content_svc.media.blobs import UploadSink, UploadState
from content_svc.media.errors import ChecksumMismatch, StorageUnavailable, TusVersionUnsupported
from content_svc.media.streaming import iter_body
from content_svc.openapi import answers_without_body
from content_svc.routes.media import (
    charge_upload,
    checked_content_type,
    media_context,
)

blueprint = Blueprint("tus", __name__)

_TUS_HEADERS = "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, Tus-Resumable, Location"


@blueprint.after_request
async def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = tus.TUS_VERSION
    response.headers["Access-Control-Expose-Headers"] = _TUS_HEADERS
    return response


def _require_tus_version() -> None:
    version = request.headers.get("Tus-Resumable")
    if version is None:
        raise TusVersionUnsupported("send Tus-Resumable: 1.0.0")
    if version.strip() != tus.TUS_VERSION:
        raise TusVersionUnsupported(f"this server speaks tus {tus.TUS_VERSION}, not {version.strip()!r}")


def _bad(exc: tus.TusProtocolError) -> InvalidRequest:
    return InvalidRequest(str(exc))


def _empty(status: int, headers: dict[str, str]) -> Response:
    response: Response = current_app.response_class(b"", status=status, headers=headers)
    del response.headers["Content-Type"]  # there is no body to describe
    return response


@blueprint.route("/v1/uploads", methods=["OPTIONS"], provide_automatic_options=False)
@security_scheme([])
@answers_without_body(204)
async def discover() -> Response:
    """tus discovery: version, extensions, the size limit and checksum algorithms (no auth)."""
    media = media_context()
    return _empty(
        204,
        {
            "Tus-Version": tus.TUS_VERSION,
            "Tus-Extension": tus.EXTENSIONS,
            "Tus-Max-Size": str(media.settings.max_media_bytes),
            "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUM_ALGORITHMS),
        },
    )


@blueprint.post("/v1/uploads")
@answers_without_body(201)
async def create() -> Response:
    """tus creation (and creation-with-upload): `Upload-Length` and `Upload-Metadata` (`filetype`
    names the media type) -> 201 with `Location`; a body of `application/offset+octet-stream` is the
    first chunk."""
    _require_tus_version()
    ctx = context()
    media = media_context()
    who = await principal()
    try:
        length = tus.parse_length(request.headers.get("Upload-Length"), "Upload-Length")
        raw_metadata = request.headers.get("Upload-Metadata", "")
        metadata = tus.parse_metadata(raw_metadata)
    except tus.TusProtocolError as exc:
        raise _bad(exc) from exc
    if length is None:
        detail = "deferred lengths are not supported" if request.headers.get("Upload-Defer-Length") else ""
        raise InvalidRequest(detail or "send Upload-Length")
    if length > media.settings.max_media_bytes:
        raise PayloadTooLarge(
            f"uploads may be at most {media.settings.max_media_bytes} bytes",
            max_bytes=media.settings.max_media_bytes,
        )
    content_type = checked_content_type(media, tus.content_type_from(metadata) or "application/octet-stream")
    has_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")
    if has_body and request.mimetype != tus.OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType(f"an upload's first chunk must be sent as {tus.OFFSET_CONTENT_TYPE}")
    charge_upload(media, who.user_id, length)

    upload_id = records.new_media_id()
    now_ms = ctx.clock_ms()
    expires_at_ms = now_ms + media.settings.upload_expiry_s * 1000
    await ctx.database.transaction(
        records.create_upload,
        upload_id=upload_id,
        owner_id=who.user_id,
        length=length,
        content_type=content_type,
        metadata=raw_metadata,
        now_ms=now_ms,
        expires_at_ms=expires_at_ms,
    )
    headers = {
        "Location": f"{request.host_url.rstrip('/')}/v1/uploads/{upload_id}",
        "Upload-Expires": tus.http_date(expires_at_ms),
    }
    if has_body or length == 0:
        state = await _append(ctx, media, who.user_id, upload_id, 0)
        headers["Upload-Offset"] = str(state.received_bytes)
    return _empty(201, headers)


@blueprint.route("/v1/uploads/<upload_id>", methods=["HEAD"])
@answers_without_body(200)
async def status(upload_id: str) -> Response:
    """The upload's offset (where to resume), length and metadata."""
    _require_tus_version()
    ctx = context()
    media = media_context()
    who = await principal()
    record = await ctx.database.read(records.get_upload, who.user_id, _checked_id(upload_id), ctx.clock_ms())
    if not record.complete and record.state.received_bytes == record.state.length:
        with contextlib.suppress(records.UploadBusy, records.OffsetMismatch):
            await _append(ctx, media, who.user_id, upload_id, record.state.length)
    headers = {
        "Upload-Offset": str(record.state.received_bytes),
        "Upload-Length": str(record.state.length),
        "Cache-Control": "no-store",
    }
    if record.metadata:
        headers["Upload-Metadata"] = record.metadata
    if not record.complete:
        headers["Upload-Expires"] = tus.http_date(record.expires_at_ms)
    return _empty(200, headers)


@blueprint.route("/v1/uploads/<upload_id>", methods=["PATCH"])
@answers_without_body(204)
async def append(upload_id: str) -> Response:
    """Append the body at `Upload-Offset` (409 if that is not the server's offset). An
    `Upload-Checksum` is checked on the whole chunk (460 and nothing kept when it differs)."""
    _require_tus_version()
    ctx = context()
    media = media_context()
    who = await principal()
    if request.mimetype != tus.OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType(f"PATCH bodies must be {tus.OFFSET_CONTENT_TYPE}")
    try:
        offset = tus.parse_length(request.headers.get("Upload-Offset"), "Upload-Offset")
    except tus.TusProtocolError as exc:
        raise _bad(exc) from exc
    if offset is None:
        raise InvalidRequest("send Upload-Offset")
    state = await _append(ctx, media, who.user_id, _checked_id(upload_id), offset)
    record = await ctx.database.read(records.get_upload, who.user_id, upload_id, ctx.clock_ms())
    headers = {"Upload-Offset": str(state.received_bytes)}
    if not record.complete:
        headers["Upload-Expires"] = tus.http_date(record.expires_at_ms)
    return _empty(204, headers)


@blueprint.delete("/v1/uploads/<upload_id>")
@answers_without_body(204)
async def terminate(upload_id: str) -> Response:
    """tus termination: the upload and its bytes are gone; later requests get 404."""
    _require_tus_version()
    ctx = context()
    media = media_context()
    who = await principal()
    record = await ctx.database.transaction(
        records.take_upload_for_removal, who.user_id, _checked_id(upload_id), ctx.clock_ms()
    )
    with trio.CancelScope(shield=True):
        await media.blobs.discard_upload(record.state)
    return _empty(204, {})


def _checked_id(upload_id: str) -> str:
    if not records.looks_like_media_id(upload_id):
        raise NotFound("no such upload")
    return upload_id


# --- appending -----------------------------------------------------------------------------------


async def _append(
    ctx: ContentContext, media: MediaContext, user_id: int, upload_id: str, offset: int
) -> UploadState:
    try:
        checksum = tus.parse_checksum(request.headers.get("Upload-Checksum"))
    except tus.TusProtocolError as exc:
        raise _bad(exc) from exc
    lock_id = secrets.token_hex(16)
    lock_ttl_ms = int(ctx.settings.request_timeout_s * 2000)
    record = await ctx.database.transaction(
        records.lock_upload,
        user_id=user_id,
        upload_id=upload_id,
        offset=offset,
        lock_id=lock_id,
        now_ms=ctx.clock_ms(),
        lock_ttl_ms=lock_ttl_ms,
    )
    state = record.state
    remaining = state.length - state.received_bytes
    if request.content_length is not None and request.content_length > remaining:
        await _release(ctx, upload_id, lock_id)
        raise PayloadTooLarge(f"the upload has {remaining} bytes left, the body has {request.content_length}")
    if remaining == 0:
        # Every byte was recorded but the object was not published: the request that recorded the last
        # byte died. Publishing is idempotent, so this request (or a HEAD) finishes the job.
        try:
            await _recover_full_upload(ctx, media, record, lock_id)
        finally:
            with trio.CancelScope(shield=True):
                await _release(ctx, upload_id, lock_id)
        return state
    sink = await media.blobs.resume_upload(state)
    keep = False
    try:
        hasher = hashlib.new(checksum[0]) if checksum else None
        renew_at = trio.current_time() + lock_ttl_ms / 3000
        try:
            async for chunk in iter_body(
                request, max_bytes=remaining, idle_timeout_s=ctx.settings.request_timeout_s
            ):
                if hasher is not None:
                    hasher.update(chunk)
                await sink.write(chunk)
                ctx.metrics.media_bytes_in.labels("tus").inc(len(chunk))
                if trio.current_time() >= renew_at:
                    # A long PATCH keeps its lock; one whose lock was taken over must stop appending.
                    held = await ctx.database.transaction(
                        records.renew_lock, upload_id, lock_id, ctx.clock_ms() + lock_ttl_ms
                    )
                    if not held:
                        raise records.UploadBusy("this request lost the upload's lock; HEAD it and resume")
                    renew_at = trio.current_time() + lock_ttl_ms / 3000
        except PayloadTooLarge:
            raise  # more than Upload-Length: the whole chunk is refused
        except (trio.Cancelled, Exception):
            # An interrupted chunk is kept up to where it stopped, unless it had to be checked whole.
            keep = checksum is None
            raise
        if checksum is not None and hasher is not None and hasher.digest() != checksum[1]:
            ctx.metrics.media_uploads.labels("tus", "checksum_mismatch").inc()
            raise ChecksumMismatch(
                f"the chunk's {checksum[0]} differs from Upload-Checksum; it was discarded"
            )
        keep = True
    finally:
        with trio.CancelScope(shield=True):
            state = await _finish_request(ctx, media, record, sink, lock_id, keep)
    return state


async def _finish_request(
    ctx: ContentContext,
    media: MediaContext,
    record: records.UploadRecord,
    sink: UploadSink,
    lock_id: str,
    keep: bool,
) -> UploadState:
    """Record what this request appended (or forget it), then publish the object if it is whole."""
    try:
        if not keep:
            await sink.discard()
            await _release(ctx, record.state.upload_id, lock_id)
            return record.state
        state = await sink.checkpoint()
        expires_at_ms = ctx.clock_ms() + media.settings.upload_expiry_s * 1000
        complete = state.received_bytes == state.length
        saved = await ctx.database.transaction(
            records.save_progress,
            lock_id=lock_id,
            state=state,
            expires_at_ms=expires_at_ms,
            release=not complete,
        )
        if not saved:
            raise records.UploadBusy("this request lost the upload's lock; HEAD it and resume")
        if complete:
            try:
                await sink.complete()
                await _publish(ctx, media, record, state, lock_id)
            except BaseException:
                # Every byte is recorded: the next PATCH or HEAD publishes it (a crashed process's lock
                # expires instead).
                await _release(ctx, record.state.upload_id, lock_id)
                raise
        return state
    finally:
        await sink.close()


async def _recover_full_upload(
    ctx: ContentContext, media: MediaContext, record: records.UploadRecord, lock_id: str
) -> None:
    state = record.state
    if await media.blobs.size_of(state.upload_id) != state.length:
        sink = await media.blobs.resume_upload(state)
        try:
            await sink.complete()
        finally:
            await sink.close()
    await _publish(ctx, media, record, state, lock_id)


async def _publish(
    ctx: ContentContext, media: MediaContext, record: records.UploadRecord, state: UploadState, lock_id: str
) -> None:
    digest = await media.blobs.sha256_of(state.upload_id, media.settings.read_chunk_bytes)
    if digest.size != state.length:
        ctx.metrics.media_uploads.labels("tus", "failed").inc()
        raise StorageUnavailable(f"the stored upload has {digest.size} bytes, not {state.length}")
    now_ms = ctx.clock_ms()
    media_record = records.MediaRecord(
        id=state.upload_id,
        owner_id=record.owner_id,
        size=digest.size,
        sha256=digest.sha256.hexdigest(),
        content_type=state.content_type,
        created_at_ms=now_ms,
    )
    await ctx.database.transaction(
        records.finish_upload, lock_id, media_record, now_ms + media.settings.upload_expiry_s * 1000
    )
    ctx.metrics.media_uploads.labels("tus", "stored").inc()


async def _release(ctx: ContentContext, upload_id: str, lock_id: str) -> None:
    await ctx.database.transaction(records.release_lock, upload_id, lock_id)
