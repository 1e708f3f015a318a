"""Media: a one-shot streaming upload, and downloads with ranges, validators and presigned redirects."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint, Response, current_app, request
from quart_schema import validate_response

from content_svc.app import context, principal
from content_svc.context import ContentContext, MediaContext
from content_svc.errors import InvalidRequest, NotFound, RateLimited
from content_svc.media import downloads, ranges, records
from content_svc.media.blobs import BlobStore
from content_svc.media.errors import (
    ContentTypeNotAllowed,
    DigestMismatch,
    StorageUnavailable,
)
from content_svc.media.streaming import iter_body
from content_svc.schemas import MediaOut

blueprint = Blueprint("media", __name__)

# type "/" subtype, then parameters: RFC 9110 §8.3.1, checked loosely but enough to keep junk out.
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,128}(\s*;.{0,120})?$")
# A download may take a while on a phone; give up on a reader slower than this.
_SLOWEST_READER_BYTES_PER_S = 8 * 1024


def media_context() -> MediaContext:
    found = context().media
    if found is None:
        raise StorageUnavailable("this server has no media storage configured")
    return found


def checked_content_type(media: MediaContext, raw: str | None) -> str:
    value = (raw or "").strip()
    if not value:
        raise ContentTypeNotAllowed("send the media's Content-Type")
    if not _CONTENT_TYPE.match(value):
        raise InvalidRequest("Content-Type is not a valid media type")
    if not media.settings.allows_content_type(value):
        raise ContentTypeNotAllowed(
            f"{value.split(';', 1)[0]} may not be uploaded here",
            allowed=list(media.settings.content_type_patterns),
        )
    return value


def charge_upload(media: MediaContext, user_id: int, size: int | None) -> None:
    """One token of the per-user upload rate, and `size` bytes of the user's byte quota."""
    wait_s = media.upload_limiter.try_acquire(user_id)
    if wait_s:
        context().metrics.rate_limited.labels("media_upload").inc()
        raise RateLimited(wait_s, "too many uploads; retry later")
    if size:
        wait_s = media.upload_bytes_limiter.try_acquire(
            user_id, float(min(size, media.settings.max_media_bytes))
        )
        if wait_s:
            context().metrics.rate_limited.labels("media_bytes").inc()
            raise RateLimited(wait_s, "upload byte quota used up; retry later")


@blueprint.post("/v1/media")
@validate_response(MediaOut, 201)
async def upload() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Upload one media object as the raw request body (streamed, never held in memory).

    `Content-Type` is the media's type (see the allow-list); an optional `Content-Digest:
    sha-256=:…:` (or legacy `Digest: SHA-256=…`) is checked on arrival. The answer's `media_id`
    goes into a message's `media` list."""
    ctx = context()
    media = media_context()
    who = await principal()
    content_type = checked_content_type(media, request.headers.get("Content-Type"))
    try:
        expected = ranges.expected_sha256(request.headers)
    except ranges.MediaProtocolError as exc:
        raise InvalidRequest(str(exc)) from exc
    charge_upload(media, who.user_id, request.content_length)

    media_id = records.new_media_id()
    writer = await media.blobs.begin_object(media_id, content_type)
    outcome = "failed"
    try:
        async for chunk in iter_body(
            request, max_bytes=media.settings.max_media_bytes, idle_timeout_s=ctx.settings.request_timeout_s
        ):
            await writer.write(chunk)
            ctx.metrics.media_bytes_in.labels("raw").inc(len(chunk))
        await writer.flush()
        digest = writer.digest.sha256.digest()
        if expected is not None and digest != expected:
            outcome = "digest_mismatch"
            raise DigestMismatch("the body's sha-256 differs from its Content-Digest")
        await writer.commit()
        record = records.MediaRecord(
            id=media_id,
            owner_id=who.user_id,
            size=writer.digest.size,
            sha256=digest.hex(),
            content_type=content_type,
            created_at_ms=ctx.clock_ms(),
        )
        try:
            await ctx.database.transaction(records.insert_media, record)
        except BaseException:
            with trio.CancelScope(shield=True):
                await media.blobs.delete(media_id)
            raise
        outcome = "stored"
    finally:
        ctx.metrics.media_uploads.labels("raw", outcome).inc()
        if outcome != "stored":
            with trio.CancelScope(shield=True):
                await writer.abort()
    return media_json(record), 201, {"Location": f"/v1/media/{media_id}"}


def media_json(record: records.MediaRecord) -> dict[str, Any]:
    return {
        "media_id": record.id,
        "size": record.size,
        "sha256": record.sha256,
        "content_type": record.content_type,
    }


@blueprint.get("/v1/media/<media_id>")
async def download(media_id: str) -> Response:
    """The media's bytes: `Range` (206, multipart/byteranges, 416), `If-Range`, `If-None-Match` (304),
    `HEAD`. On S3 in redirect mode: 302 to a short-lived presigned URL instead."""
    ctx = context()
    media = media_context()
    who = await principal()
    if not records.looks_like_media_id(media_id):
        raise NotFound("no such media")
    record = media.access_cache.get(who.user_id, media_id)
    if record is None:
        record = await ctx.database.read(records.readable_media, who.user_id, media_id)
        media.access_cache.remember(who.user_id, record)
    settings = media.settings
    headers = downloads.validator_headers(record, settings)
    if downloads.not_modified(request.headers, headers):
        return _not_modified(headers)
    if settings.backend == "s3" and settings.s3_download_mode == "redirect":
        url = await media.blobs.presigned_get(media_id, settings.s3_presign_ttl_s, record.content_type)
        if url is not None:
            ctx.metrics.media_redirects.inc()
            # The URL expires; caching the redirect would outlive it.
            return _answer(
                b"", 302, {"Location": url, "Cache-Control": "private, no-store", "ETag": headers["ETag"]}
            )
    plan = downloads.body_plan(record, request.headers, settings, headers)
    chunk = settings.read_chunk_bytes
    if isinstance(plan, downloads.Multipart):
        body = _multipart(media.blobs, media_id, plan.framing, chunk)
        return _stream(_count(body, ctx), 206, headers, plan.framing.content_length)
    if plan.length <= chunk:
        # Read before answering: a missing object is a 503 problem, not a connection cut after a 200.
        data = await media.blobs.read_at_once(media_id, plan.start, plan.stop) if plan.length else b""
        ctx.metrics.media_bytes_out.inc(len(data))
        return _answer(data, plan.status, headers)
    if await media.blobs.size_of(media_id) is None:
        # Once the head is out, a failed read can only cut the connection: ask before answering.
        raise StorageUnavailable(f"media {media_id} is missing from storage")
    body = media.blobs.read(media_id, plan.start, plan.stop, chunk)
    return _stream(_count(body, ctx), plan.status, headers, plan.length)


async def _multipart(
    blobs: BlobStore, media_id: str, framing: ranges.MultipartByteranges, chunk_bytes: int
) -> AsyncIterator[bytes]:
    for preamble, part in framing.parts():
        yield preamble
        async for data in blobs.read(media_id, part.start, part.stop, chunk_bytes):
            yield data
    yield framing.epilogue_bytes


async def _count(body: AsyncIterator[bytes], ctx: ContentContext) -> AsyncIterator[bytes]:
    async for data in body:
        ctx.metrics.media_bytes_out.inc(len(data))
        yield data


def _answer(body: bytes, status: int, headers: dict[str, str]) -> Response:
    response: Response = current_app.response_class(body, status=status, headers=headers)
    return response


def _not_modified(headers: dict[str, str]) -> Response:
    """A 304 carries the validators and caching headers only: no Content-Type (a cache would take it
    as the media's) and no Content-Length (RFC 9110 §8.6: only the 200's length may appear there)."""
    response = _answer(b"", 304, headers)
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    return response


def _stream(body: AsyncIterator[bytes], status: int, headers: dict[str, str], length: int) -> Response:
    response: Response = current_app.response_class(body, status=status, headers=headers)
    response.headers["Content-Length"] = str(length)
    # The app-wide response timeout is for JSON; a large download on a slow link may take long.
    response.timeout = max(context().settings.request_timeout_s, length / _SLOWEST_READER_BYTES_PER_S)
    return response
