"""Blob stores for chat media: one interface, a local-disk backend here and S3 in `s3.py`.

Three ways bytes come in and one way they go out:

- a one-shot upload (`POST /v1/media`): `begin_object` gives a `BlobWriter`; bytes go to a temporary
  place and become the object only on `commit` (rename on disk, CompleteMultipartUpload or one
  PutObject on S3), so a reader never sees half an object;
- a resumable (tus) upload spread over many requests, perhaps on different replicas:
  `resume_upload` gives an `UploadSink` that appends at the recorded offset and reports, on
  `checkpoint`, what must be written back to the `uploads` row; `complete` makes the object;
- reads of byte ranges (`read`), or a presigned URL the client fetches directly (`presigned_get`).

Every blocking call (file I/O, boto3) runs in a worker thread (reads the page cache can answer at
once excepted: page_cache.py); bytes are gathered into large buffers
first, so a 1 GiB upload costs about a thousand thread hops and never more than a few MiB of memory.
The database, not the store, is the source of truth: a store never decides whether media exists.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TypeVar

import outcome
import trio

from content_svc.media.errors import StorageUnavailable
from content_svc.media.page_cache import RWF_NOWAIT, OpenObjects, read_if_cached, residency

WRITE_BUFFER_BYTES = 1024 * 1024
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class UploadState:
    """What the `uploads` row records about where a resumable upload's bytes are."""

    upload_id: str
    length: int
    received_bytes: int = 0
    content_type: str = "application/octet-stream"
    s3_upload_id: str | None = None
    s3_parts: tuple[tuple[int, str], ...] = ()
    tail_bytes: int = 0


@dataclass(slots=True)
class Digest:
    """A running sha256 and byte count of what passed through a writer."""

    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.sha256.update(data)
        self.size += len(data)


class BlobWriter(abc.ABC):
    """One object being written in one request. `write` buffers; the store sees large writes only."""

    def __init__(self) -> None:
        self.digest = Digest()
        self._buffer = bytearray()

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= WRITE_BUFFER_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Hand buffered bytes to the store (after which `digest` covers everything written)."""
        if self._buffer:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            await self._write_hashed(chunk)

    @abc.abstractmethod
    async def _write_hashed(self, chunk: bytes) -> None:
        """Hash and store `chunk` (in a worker thread: hashing 1 MiB takes about a millisecond)."""

    async def commit(self) -> None:
        """Make the object visible under its final key."""
        await self.flush()
        await self._commit()

    @abc.abstractmethod
    async def _commit(self) -> None: ...

    @abc.abstractmethod
    async def abort(self) -> None:
        """Forget everything written; safe to call twice and after a failed commit."""


class UploadSink(abc.ABC):
    """Appends one request's bytes to a resumable upload."""

    def __init__(self, state: UploadState) -> None:
        self.state = state
        self.received_now = 0
        self._buffer = bytearray()

    @property
    def offset(self) -> int:
        return self.state.received_bytes + self.received_now + len(self._buffer)

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= WRITE_BUFFER_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if self._buffer:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            await self._append(chunk)
            self.received_now += len(chunk)

    @abc.abstractmethod
    async def _append(self, chunk: bytes) -> None: ...

    async def checkpoint(self) -> UploadState:
        """Persist what arrived so far and return the state the `uploads` row must now hold."""
        await self._flush()
        return await self._checkpoint()

    @abc.abstractmethod
    async def _checkpoint(self) -> UploadState: ...

    @abc.abstractmethod
    async def complete(self) -> None:
        """After a checkpoint that reached the full length: make the object (id = upload id) visible."""

    @abc.abstractmethod
    async def discard(self) -> None:
        """Forget this request's bytes: the upload stays as its last checkpoint recorded it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the request's file handles; bytes already checkpointed stay."""


class BlobStore(abc.ABC):
    """Where media bytes live. Keys are media ids; the store adds its own layout."""

    name: str

    @abc.abstractmethod
    async def begin_object(self, media_id: str, content_type: str) -> BlobWriter: ...

    @abc.abstractmethod
    async def resume_upload(self, state: UploadState) -> UploadSink: ...

    @abc.abstractmethod
    async def discard_upload(self, state: UploadState) -> None:
        """Drop an unfinished upload's bytes (termination, expiry)."""

    @abc.abstractmethod
    async def size_of(self, media_id: str) -> int | None:
        """The stored object's size, None when there is none."""

    @abc.abstractmethod
    def read(self, media_id: str, start: int, stop: int, chunk_bytes: int) -> AsyncIterator[bytes]:
        """Bytes [start, stop) of the object, in chunks of at most `chunk_bytes`."""

    async def read_at_once(self, media_id: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) in one piece: for answers small enough to hold whole (one read chunk)."""
        return b"".join([chunk async for chunk in self.read(media_id, start, stop, max(1, stop - start))])

    async def open_if_cached(self, media_id: str, start: int, stop: int) -> int | None:  # noqa: ARG002
        """A descriptor of the object, of the caller's own to close, if bytes [start, stop) can be sent
        from memory right now without waiting for a disk (`zero_copy`); None otherwise."""
        return None

    async def sha256_of(self, media_id: str, chunk_bytes: int) -> Digest:
        size = await self.size_of(media_id)
        if size is None:
            raise StorageUnavailable(f"object {media_id} is missing")
        digest = Digest()
        async for chunk in self.read(media_id, 0, size, chunk_bytes):
            await trio.to_thread.run_sync(digest.update, chunk)
        return digest

    @abc.abstractmethod
    async def delete(self, media_id: str) -> None: ...

    async def presigned_get(self, media_id: str, ttl_s: int, content_type: str) -> str | None:  # noqa: ARG002
        """A URL the client can GET directly, or None if this store serves bytes itself."""
        return None

    async def aclose(self) -> None:
        return None


# --- local disk --------------------------------------------------------------------------------------


class LocalBlobStore(BlobStore):
    """Files under one directory: `objects/ab/<id>`, `tmp/` for one-shot writes, `uploads/<id>`.

    `tmp/` and `objects/` are on one file system, so commit is an atomic rename after fsync.
    """

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open = OpenObjects()
        for sub in ("objects", "tmp", "uploads"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def object_path(self, media_id: str) -> Path:
        return self.root / "objects" / media_id[:2] / media_id

    def upload_path(self, upload_id: str) -> Path:
        return self.root / "uploads" / upload_id

    async def begin_object(self, media_id: str, content_type: str) -> BlobWriter:  # noqa: ARG002 - a file has no type
        tmp = self.root / "tmp" / f"{media_id}.{secrets.token_hex(4)}"
        handle: IO[bytes] = await _in_thread(open, tmp, "xb")
        return _LocalWriter(handle, tmp, self.object_path(media_id))

    async def resume_upload(self, state: UploadState) -> UploadSink:
        path = self.upload_path(state.upload_id)
        handle = await _in_thread(_open_at, path, state.received_bytes)
        return _LocalSink(state, handle, path, self)

    async def discard_upload(self, state: UploadState) -> None:
        await _in_thread(_unlink, self.upload_path(state.upload_id))

    async def size_of(self, media_id: str) -> int | None:
        try:
            return (await _in_thread(os.stat, self.object_path(media_id))).st_size
        except FileNotFoundError:
            return None

    async def read(self, media_id: str, start: int, stop: int, chunk_bytes: int) -> AsyncIterator[bytes]:
        """Reads one chunk ahead: the next `pread` runs in a worker thread while the caller sends the
        current chunk, so disk (or page cache) and socket overlap instead of taking turns.

        A range that fits in one chunk (the usual seek of a player, a thumbnail) is opened, read and
        closed in a single worker-thread call: each thread hop costs about as much CPU as reading
        a megabyte from the page cache, and three of them were most of a small range's cost."""
        if 0 < stop - start <= chunk_bytes:
            yield await self.read_at_once(media_id, start, stop)
            return
        handle: IO[bytes] = await _in_thread(open, self.object_path(media_id), "rb", buffering=0)
        fd = handle.fileno()
        ahead: _ThreadResult | None = None
        try:
            position = start
            if position < stop:
                ahead = _ThreadResult.start(os.pread, fd, min(chunk_bytes, stop - position), position)
            while ahead is not None:
                chunk = await ahead.wait()
                ahead = None
                if not chunk:
                    raise StorageUnavailable(f"object {media_id} is shorter than recorded")
                position += len(chunk)
                if position < stop:
                    ahead = _ThreadResult.start(os.pread, fd, min(chunk_bytes, stop - position), position)
                yield chunk
        finally:
            with trio.CancelScope(shield=True):
                if ahead is not None:  # never close the descriptor under a read still running
                    await ahead.settled()
                await _in_thread(handle.close)

    async def _kept_descriptor(self, media_id: str) -> int:
        fd = self._open.get(media_id)
        if fd is None:
            opened = await _in_thread(os.open, self.object_path(media_id), os.O_RDONLY | os.O_CLOEXEC)
            fd = self._open.keep(media_id, opened)
        return fd

    async def open_if_cached(self, media_id: str, start: int, stop: int) -> int | None:
        """A duplicate of the kept descriptor: the kept one may be closed (expiry, eviction, a
        delete) while the caller's sendfile waits for the socket, and its number reused."""
        if not residency.available or stop <= start:
            return None
        try:
            fd = await self._kept_descriptor(media_id)
        except OSError:
            return None  # the reader reports it
        return os.dup(fd) if residency.all_cached(fd, start, stop - start) else None

    async def read_at_once(self, media_id: str, start: int, stop: int) -> bytes:
        """From the page cache on the trio thread when it holds the span, else in a worker thread."""
        try:
            if RWF_NOWAIT is not None and stop > start:
                fd = await self._kept_descriptor(media_id)
                cached = read_if_cached(fd, start, stop - start)
                if cached is not None:
                    return cached
            whole = await _in_thread(_read_range, self.object_path(media_id), start, stop - start)
        except FileNotFoundError as exc:
            raise StorageUnavailable(f"object {media_id} is missing") from exc
        except OSError as exc:
            raise StorageUnavailable(f"media storage failed: {exc.strerror or exc}") from exc
        if len(whole) < stop - start:
            raise StorageUnavailable(f"object {media_id} is shorter than recorded")
        return whole

    async def delete(self, media_id: str) -> None:
        self._open.drop(media_id)
        await _in_thread(_unlink, self.object_path(media_id))

    async def aclose(self) -> None:
        self._open.close_all()


class _LocalWriter(BlobWriter):
    def __init__(self, handle: IO[bytes], tmp: Path, final: Path) -> None:
        super().__init__()
        self._handle, self._tmp, self._final = handle, tmp, final
        self._done = False

    async def _write_hashed(self, chunk: bytes) -> None:
        await _in_thread(_hash_and_write, self.digest, self._handle, chunk)

    async def _commit(self) -> None:
        await _in_thread(_fsync_close_rename, self._handle, self._tmp, self._final)
        self._done = True

    async def abort(self) -> None:
        if not self._done:
            self._done = True
            await _in_thread(_close_unlink, self._handle, self._tmp)


class _LocalSink(UploadSink):
    def __init__(self, state: UploadState, handle: IO[bytes], path: Path, store: LocalBlobStore) -> None:
        super().__init__(state)
        self._handle, self._path, self._store = handle, path, store

    async def _append(self, chunk: bytes) -> None:
        await _in_thread(self._handle.write, chunk)

    async def _checkpoint(self) -> UploadState:
        await _in_thread(_flush_fsync, self._handle)
        self.state = replace(self.state, received_bytes=self.state.received_bytes + self.received_now)
        self.received_now = 0
        return self.state

    async def complete(self) -> None:
        await _in_thread(
            _fsync_close_rename, self._handle, self._path, self._store.object_path(self.state.upload_id)
        )

    async def discard(self) -> None:
        self._buffer.clear()
        if not self._handle.closed:
            await _in_thread(self._handle.truncate, self.state.received_bytes)

    async def close(self) -> None:
        await _in_thread(self._handle.close)


# --- blocking helpers, run in worker threads -----------------------------------------------------------


class _ThreadResult:
    """A blocking call started in a worker thread now and awaited later (trio.to_thread.run_sync
    would block the caller until it returns). Used to read ahead inside an async generator, where a
    nursery cannot live across a `yield`."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[bytes] | None = None

    @classmethod
    def start(cls, fn: Callable[..., bytes], *args: Any) -> _ThreadResult:
        result = cls()
        token = trio.lowlevel.current_trio_token()

        def deliver(value: outcome.Outcome[bytes]) -> None:
            token.run_sync_soon(result._finish, value)

        trio.lowlevel.start_thread_soon(lambda: fn(*args), deliver)
        return result

    def _finish(self, value: outcome.Outcome[bytes]) -> None:
        self._outcome = value
        self._done.set()

    async def settled(self) -> None:
        await self._done.wait()

    async def wait(self) -> bytes:
        await self._done.wait()
        assert self._outcome is not None
        try:
            return self._outcome.unwrap()
        except OSError as exc:
            raise StorageUnavailable(f"media storage failed: {exc.strerror or exc}") from exc


def _read_range(path: Path, offset: int, length: int) -> bytes:
    """Up to `length` bytes at `offset` (fewer only at the end of the file)."""
    with open(path, "rb", buffering=0) as handle:
        parts: list[bytes] = []
        got = 0
        while got < length:
            part = os.pread(handle.fileno(), length - got, offset + got)
            if not part:
                break
            parts.append(part)
            got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _in_thread(fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    try:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise StorageUnavailable(f"media storage failed: {exc.strerror or exc}") from exc


def _open_at(path: Path, offset: int) -> IO[bytes]:
    """Open an upload file for appending at the recorded offset; bytes past it (written by a request
    that died before recording them) are dropped, because the database's offset is the truth."""
    if not path.exists() and offset > 0:
        # Creating it would fill the recorded offset with zeros: refuse, the upload's bytes are gone.
        raise StorageUnavailable(f"the bytes of upload {path.name} are missing")
    handle = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 - closed by the sink
    handle.truncate(offset)
    handle.seek(offset)
    return handle


def _hash_and_write(digest: Digest, handle: IO[bytes], chunk: bytes) -> None:
    digest.update(chunk)
    handle.write(chunk)


def _flush_fsync(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_close_rename(handle: IO[bytes], source: Path, target: Path) -> None:
    if not handle.closed:
        _flush_fsync(handle)
        handle.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def _close_unlink(handle: IO[bytes], path: Path) -> None:
    handle.close()
    _unlink(path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
