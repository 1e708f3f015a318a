"""Reads that the page cache can answer, done on the trio thread instead of a worker thread.

A worker-thread hop costs about 75 µs of CPU on the 2-vCPU VM (two thread wake-ups and GIL
hand-overs), more than reading a 1-byte or 64 KiB range from memory and as much as copying a
megabyte. Linux's `preadv(..., RWF_NOWAIT)` reads only what is already in the page cache and fails
with EAGAIN instead of waiting for the disk, so it can run on the event loop without ever blocking
it on I/O; whatever it cannot serve goes to a worker thread as before.

`open()` can block too (a cold directory or inode), so descriptors are opened in a worker thread and
kept for a short while (`OpenObjects`): a player seeking through a video reads one object many times
in a row. Media objects never change once written, so a kept descriptor reads the right bytes; after
a delete it may read the old ones for at most `ttl_s`, and only for a reader the database allowed.

The descriptors are used and closed on the trio thread only, and reads on it are synchronous there,
so a descriptor is never closed (and its number reused) under a read in progress. Worker-thread
reads open their own.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

# None where the platform has no RWF_NOWAIT (not Linux): every read takes the worker thread.
RWF_NOWAIT: Final[int | None] = getattr(os, "RWF_NOWAIT", None)
_NOT_NOW: Final = frozenset({errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL})


def read_if_cached(fd: int, offset: int, length: int) -> bytes | None:
    """`length` bytes at `offset` if the page cache holds all of them, else None (never waits on disk)."""
    if RWF_NOWAIT is None:
        return None
    buffer = bytearray(length)
    try:
        got = os.preadv(fd, [buffer], offset, RWF_NOWAIT)
    except OSError as exc:
        if exc.errno in _NOT_NOW:
            return None
        raise
    return bytes(buffer) if got == length else None


# cachestat(2), Linux 6.5+: how many pages of a file range the page cache holds, without touching
# them. The same syscall number on every architecture (it came after the tables were unified).
_SYS_CACHESTAT: Final = 451
_PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _CachestatRange(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Cachestat(ctypes.Structure):
    _fields_ = tuple(
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    )


class _Residency:
    """`all_cached` with the syscall looked up once; off for good where the kernel refuses it."""

    def __init__(self) -> None:
        self._syscall: Callable[..., int] | None = None
        if sys.platform == "linux":
            try:
                self._syscall = ctypes.CDLL(None, use_errno=True).syscall
            except (OSError, AttributeError):
                self._syscall = None

    @property
    def available(self) -> bool:
        return self._syscall is not None

    def all_cached(self, fd: int, offset: int, length: int) -> bool:
        """True if the page cache holds every byte of [offset, offset + length) of `fd` (a range
        past the end of the file is not cached); False if not, or if nobody can tell."""
        syscall = self._syscall
        if syscall is None or length <= 0:
            return False
        span, counts = _CachestatRange(offset, length), _Cachestat()
        if syscall(_SYS_CACHESTAT, fd, ctypes.byref(span), ctypes.byref(counts), 0) != 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # old kernel, or a seccomp filter
                self._syscall = None
            return False
        pages = (offset + length - 1) // _PAGE_BYTES - offset // _PAGE_BYTES + 1
        return bool(counts.nr_cache >= pages)


residency = _Residency()


class OpenObjects:
    """Read-only descriptors of recently read objects, least recently used out, each kept `ttl_s`."""

    def __init__(
        self, *, max_open: int = 64, ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_open = max_open
        self._ttl_s = ttl_s
        self._clock = clock
        self._fds: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def get(self, key: str) -> int | None:
        found = self._fds.get(key)
        if found is None:
            return None
        if self._clock() >= found[1]:
            self.drop(key)
            return None
        self._fds.move_to_end(key)
        return found[0]

    def keep(self, key: str, fd: int) -> int:
        """Keep `fd` for `key` and return the descriptor to use: the one already kept, if another
        task opened the same object meanwhile (then `fd` is closed)."""
        kept = self.get(key)
        if kept is not None:
            os.close(fd)
            return kept
        self._fds[key] = (fd, self._clock() + self._ttl_s)
        while len(self._fds) > self._max_open:
            _, (oldest, _) = self._fds.popitem(last=False)
            os.close(oldest)
        return fd

    def drop(self, key: str) -> None:
        found = self._fds.pop(key, None)
        if found is not None:
            os.close(found[0])

    def close_all(self) -> None:
        while self._fds:
            _, (fd, _) = self._fds.popitem()
            os.close(fd)

    def __len__(self) -> int:
        return len(self._fds)
