"""Page-cache reads on the event loop and the short-lived descriptors they use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from content_svc.media.page_cache import RWF_NOWAIT, OpenObjects, read_if_cached, residency

pytestmark = pytest.mark.skipif(RWF_NOWAIT is None, reason="RWF_NOWAIT is Linux-only")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def an_object(tmp_path: Path, name: str = "a", data: bytes = b"0123456789" * 100) -> int:
    path = tmp_path / name
    path.write_bytes(data)  # just written: in the page cache
    return os.open(path, os.O_RDONLY)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_cached_span_is_read_whole(tmp_path: Path) -> None:
    fd = an_object(tmp_path)
    try:
        assert read_if_cached(fd, 5, 10) == b"5678901234"
        assert read_if_cached(fd, 0, 1000) == b"0123456789" * 100
    finally:
        os.close(fd)


def test_a_span_past_the_end_is_not_answered_here(tmp_path: Path) -> None:
    """Short means "ask the worker thread", which tells a short object from an uncached one."""
    fd = an_object(tmp_path)
    try:
        assert read_if_cached(fd, 990, 20) is None
    finally:
        os.close(fd)


def test_other_read_errors_are_raised(tmp_path: Path) -> None:
    fd = an_object(tmp_path)
    os.close(fd)
    with pytest.raises(OSError):
        read_if_cached(fd, 0, 1)


def test_descriptors_expire_and_are_closed(tmp_path: Path) -> None:
    clock = Clock()
    objects = OpenObjects(ttl_s=10, clock=clock)
    fd = objects.keep("a", an_object(tmp_path))
    assert objects.get("a") == fd
    clock.now = 10
    assert objects.get("a") is None
    assert not is_open(fd)


def test_the_least_recently_used_descriptor_goes_first(tmp_path: Path) -> None:
    objects = OpenObjects(max_open=2)
    a = objects.keep("a", an_object(tmp_path, "a"))
    b = objects.keep("b", an_object(tmp_path, "b"))
    assert objects.get("a") == a  # now b is the oldest
    c = objects.keep("c", an_object(tmp_path, "c"))
    assert (objects.get("a"), objects.get("b"), objects.get("c")) == (a, None, c)
    assert not is_open(b)
    objects.close_all()
    assert len(objects) == 0 and not is_open(a) and not is_open(c)


def test_a_second_open_of_the_same_object_is_closed_and_the_kept_one_used(tmp_path: Path) -> None:
    objects = OpenObjects()
    first = objects.keep("a", an_object(tmp_path))
    second = an_object(tmp_path, "a2")
    assert objects.keep("a", second) == first
    assert not is_open(second) and is_open(first)
    objects.drop("a")
    assert not is_open(first) and len(objects) == 0


def test_residency_tells_cached_from_evicted_pages(tmp_path: Path) -> None:
    assert residency.available, "cachestat(2) needs Linux 6.5+; this machine's kernel has it"
    data = os.urandom(64 * 4096)
    fd = an_object(tmp_path, data=data)
    try:
        assert residency.all_cached(fd, 0, len(data))
        assert residency.all_cached(fd, 4095, 2)  # two pages, both cached
        assert not residency.all_cached(fd, len(data) - 10, 20)  # past the end of the file
        assert not residency.all_cached(fd, 0, 0)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not residency.all_cached(fd, 0, len(data))
        os.pread(fd, 4096, 8 * 4096)  # one page back (and whatever readahead brings along)
        assert residency.all_cached(fd, 8 * 4096, 4096)
        assert not residency.all_cached(fd, 0, len(data))
    finally:
        os.close(fd)
