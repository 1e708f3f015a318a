"""The media access cache: positive answers only, for ttl_s, per (user, media), bounded."""

from __future__ import annotations

from content_svc.media.access import AccessCache
from content_svc.media.records import MediaRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(media_id: str) -> MediaRecord:
    return MediaRecord(
        id=media_id, owner_id=1, size=3, sha256="ab" * 32, content_type="image/png", created_at_ms=0
    )


def test_an_answer_is_reused_for_its_ttl_then_asked_again() -> None:
    clock = Clock()
    cache = AccessCache(ttl_s=30, clock=clock)
    assert cache.get(7, "m1") is None
    cache.remember(7, record("m1"))
    clock.now += 29.9
    assert cache.get(7, "m1") == record("m1")
    clock.now += 0.2
    assert cache.get(7, "m1") is None
    assert len(cache) == 0


def test_answers_are_per_user() -> None:
    cache = AccessCache(clock=Clock())
    cache.remember(7, record("m1"))
    assert cache.get(8, "m1") is None


def test_a_zero_ttl_caches_nothing() -> None:
    cache = AccessCache(ttl_s=0, clock=Clock())
    cache.remember(7, record("m1"))
    assert cache.get(7, "m1") is None


def test_the_least_recently_used_entries_go_first_past_the_bound() -> None:
    cache = AccessCache(max_entries=2, clock=Clock())
    cache.remember(1, record("a"))
    cache.remember(1, record("b"))
    assert cache.get(1, "a") is not None  # now the most recent
    cache.remember(1, record("c"))
    assert cache.get(1, "b") is None
    assert cache.get(1, "a") is not None and cache.get(1, "c") is not None
