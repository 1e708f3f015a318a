"""The S3 blob store (boto3 in worker threads): multipart uploads fed from a disk spool.

S3 refuses multipart parts under 5 MiB (except the last), while phones send whatever chunk their
network allows. Bytes therefore gather in a spool *file* (never memory) until a whole part of
`part_size` bytes is there; every part but the last is exactly `part_size`, so the offset of an
upload is always `parts * part_size + tail`.

A tus upload may continue on another replica, so a request that ends between part boundaries
leaves its remainder in S3 as a "tail" object (`<prefix>uploads/<id>/tail`, under one part in
size); the next request fetches the tail into its spool first. The object itself appears only on
CompleteMultipartUpload (or one PutObject for something smaller than a part), which is S3's own
"write under a temporary name, then publish".
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, TypeVar

import boto3
import trio
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from content_svc.media.blobs import (
    BlobStore,
    BlobWriter,
    Digest,
    UploadSink,
    UploadState,
)
from content_svc.media.errors import StorageUnavailable
from pingpull.config import MediaSettings

_R = TypeVar("_R")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})


class S3BlobStore(BlobStore):
    name = "s3"

    def __init__(self, settings: MediaSettings, spool_dir: Path, client: Any | None = None) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.part_size = settings.s3_part_size_bytes
        self.spool_dir = spool_dir
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region or None,
            config=BotoConfig(
                signature_version="s3v4",
                # Custom endpoints (MinIO, moto, an IP) rarely have wildcard DNS for bucket hosts.
                s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
                max_pool_connections=settings.s3_max_concurrency,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self._limiter = trio.CapacityLimiter(settings.s3_max_concurrency)

    def object_key(self, media_id: str) -> str:
        return f"{self.prefix}objects/{media_id}"

    def tail_key(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{upload_id}/tail"

    async def call(self, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        try:
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)
        except (BotoCoreError, ClientError, OSError) as exc:
            if isinstance(exc, ClientError) and _code(exc) in _MISSING:
                raise
            raise StorageUnavailable(f"S3 request failed: {exc}") from exc

    # --- writing ----------------------------------------------------------------------------------

    def new_spool(self) -> IO[bytes]:
        return tempfile.TemporaryFile(dir=self.spool_dir)

    async def upload_part(
        self, key: str, upload_id: str | None, number: int, spool: IO[bytes]
    ) -> tuple[str, str]:
        """Upload the spool as part `number`, creating the multipart upload first if needed."""
        if upload_id is None:
            created = await self.call(self.client.create_multipart_upload, Bucket=self.bucket, Key=key)
            upload_id = str(created["UploadId"])
        spool.seek(0)
        answer = await self.call(
            self.client.upload_part,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=spool,
        )
        return upload_id, str(answer["ETag"])

    async def complete_parts(self, key: str, upload_id: str, parts: tuple[tuple[int, str], ...]) -> None:
        await self.call(
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ClientError):  # already gone is what we wanted
            await self.call(
                self.client.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload_id
            )

    async def put_spool(self, key: str, spool: IO[bytes], content_type: str | None = None) -> None:
        spool.seek(0)
        extra = {"ContentType": content_type} if content_type else {}
        await self.call(self.client.put_object, Bucket=self.bucket, Key=key, Body=spool, **extra)

    async def begin_object(self, media_id: str, content_type: str) -> BlobWriter:
        return _S3Writer(
            self, self.object_key(media_id), content_type, await trio.to_thread.run_sync(self.new_spool)
        )

    async def resume_upload(self, state: UploadState) -> UploadSink:
        spool = await trio.to_thread.run_sync(self.new_spool)
        if state.tail_bytes:
            try:
                answer = await self.call(
                    self.client.get_object, Bucket=self.bucket, Key=self.tail_key(state.upload_id)
                )
                await self.call(_copy_stream, answer["Body"], spool)
            except ClientError as exc:
                spool.close()
                raise StorageUnavailable(f"the stored tail of upload {state.upload_id} is gone") from exc
        return _S3Sink(self, state, spool)

    async def discard_upload(self, state: UploadState) -> None:
        if state.s3_upload_id:
            await self.abort_multipart(self.object_key(state.upload_id), state.s3_upload_id)
        await self.delete_key(self.tail_key(state.upload_id))

    # --- reading ----------------------------------------------------------------------------------

    async def size_of(self, media_id: str) -> int | None:
        try:
            head = await self.call(self.client.head_object, Bucket=self.bucket, Key=self.object_key(media_id))
        except ClientError:
            return None
        return int(head["ContentLength"])

    async def read(self, media_id: str, start: int, stop: int, chunk_bytes: int) -> AsyncIterator[bytes]:
        if stop <= start:
            return
        try:
            answer = await self.call(
                self.client.get_object,
                Bucket=self.bucket,
                Key=self.object_key(media_id),
                Range=f"bytes={start}-{stop - 1}",
            )
        except ClientError as exc:
            raise StorageUnavailable(f"object {media_id} is missing from S3") from exc
        body = answer["Body"]
        try:
            remaining = stop - start
            while remaining > 0:
                chunk: bytes = await self.call(body.read, min(chunk_bytes, remaining))
                if not chunk:
                    raise StorageUnavailable(f"object {media_id} is shorter than recorded")
                remaining -= len(chunk)
                yield chunk
        finally:
            body.close()

    async def presigned_get(self, media_id: str, ttl_s: int, content_type: str) -> str | None:
        url: str = self.client.generate_presigned_url(  # local computation, no request
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.object_key(media_id),
                "ResponseContentType": content_type,
                "ResponseCacheControl": "private, max-age=31536000, immutable",
            },
            ExpiresIn=ttl_s,
        )
        return url

    async def delete(self, media_id: str) -> None:
        await self.delete_key(self.object_key(media_id))

    async def delete_key(self, key: str) -> None:
        with contextlib.suppress(ClientError):
            await self.call(self.client.delete_object, Bucket=self.bucket, Key=key)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.client.close)


class _S3Writer(BlobWriter):
    def __init__(self, store: S3BlobStore, key: str, content_type: str, spool: IO[bytes]) -> None:
        super().__init__()
        self._store, self._key, self._content_type, self._spool = store, key, content_type, spool
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str]] = []
        self._spooled = 0
        self._done = False

    async def _write_hashed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            take = view[: self._store.part_size - self._spooled]
            await trio.to_thread.run_sync(_hash_and_write, self.digest, self._spool, take)
            self._spooled += len(take)
            view = view[len(take) :]
            if self._spooled == self._store.part_size:
                await self._ship_part()

    async def _ship_part(self) -> None:
        number = len(self._parts) + 1
        self._upload_id, etag = await self._store.upload_part(self._key, self._upload_id, number, self._spool)
        self._parts.append((number, etag))
        await trio.to_thread.run_sync(_truncate, self._spool)
        self._spooled = 0

    async def _commit(self) -> None:
        if self._upload_id is None:
            await self._store.put_spool(self._key, self._spool, self._content_type)
        else:
            if self._spooled:
                await self._ship_part()
            await self._store.complete_parts(self._key, self._upload_id, tuple(self._parts))
        self._done = True
        self._spool.close()

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._spool.close()
        if self._upload_id is not None:
            with trio.CancelScope(shield=True):
                await self._store.abort_multipart(self._key, self._upload_id)


class _S3Sink(UploadSink):
    def __init__(self, store: S3BlobStore, state: UploadState, spool: IO[bytes]) -> None:
        super().__init__(state)
        self._store, self._spool = store, spool
        self._key = store.object_key(state.upload_id)
        self._spooled = state.tail_bytes
        self._parts = list(state.s3_parts)
        self._upload_id = state.s3_upload_id
        self._completed_parts = False

    async def _append(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            take = view[: self._store.part_size - self._spooled]
            await trio.to_thread.run_sync(self._spool.write, take)
            self._spooled += len(take)
            view = view[len(take) :]
            if self._spooled == self._store.part_size:
                number = len(self._parts) + 1
                self._upload_id, etag = await self._store.upload_part(
                    self._key, self._upload_id, number, self._spool
                )
                self._parts.append((number, etag))
                await trio.to_thread.run_sync(_truncate, self._spool)
                self._spooled = 0

    async def _checkpoint(self) -> UploadState:
        received = self.state.received_bytes + self.received_now
        tail_key = self._store.tail_key(self.state.upload_id)
        # Park the remainder in S3 before the offset is recorded, so that any replica can continue the
        # upload, or finish publishing it if this process dies right after recording the last byte.
        if self._spooled:
            await self._store.put_spool(tail_key, self._spool)
        elif self.state.tail_bytes:
            await self._store.delete_key(tail_key)
        self.state = replace(
            self.state,
            received_bytes=received,
            s3_upload_id=self._upload_id,
            s3_parts=tuple(self._parts),
            tail_bytes=self._spooled,
        )
        self.received_now = 0
        return self.state

    async def complete(self) -> None:
        if self._upload_id is None:
            await self._store.put_spool(self._key, self._spool, self.state.content_type)
        else:
            if self._spooled:
                number = len(self._parts) + 1
                _, etag = await self._store.upload_part(self._key, self._upload_id, number, self._spool)
                self._parts.append((number, etag))
            await self._store.complete_parts(self._key, self._upload_id, tuple(self._parts))
        self._spool.close()
        await self._store.delete_key(self._store.tail_key(self.state.upload_id))

    async def discard(self) -> None:
        self._buffer.clear()
        # Parts this request uploaded are replaced by number later, or dropped by Complete; a multipart
        # upload this request started and never recorded would leak, so it goes now.
        if self.state.s3_upload_id is None and self._upload_id is not None:
            await self._store.abort_multipart(self._key, self._upload_id)
            self._upload_id = None

    async def close(self) -> None:
        self._spool.close()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _hash_and_write(digest: Digest, spool: IO[bytes], data: memoryview) -> None:
    digest.update(data)
    spool.write(data)


def _truncate(spool: IO[bytes]) -> None:
    spool.seek(0)
    spool.truncate()


def _copy_stream(body: Any, spool: IO[bytes]) -> None:
    for chunk in iter(lambda: body.read(1024 * 1024), b""):
        spool.write(chunk)
    body.close()
