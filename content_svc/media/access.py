"""A short-lived memory of who may read which media, so ranged downloads skip the database.

A player seeking through a video sends a burst of Range requests for one media object; each would
otherwise cost a database round trip (through the asyncio bridge) that dominates its CPU time (see
bench/results/media.md). Media never changes once it exists, so a positive answer can be reused; the
only thing that changes is access (a member leaves a conversation), and `ttl_s` bounds how long a
replica may keep serving a reader whose access was taken away. Negative answers are never cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from content_svc.media.records import MediaRecord


class AccessCache:
    def __init__(
        self, *, ttl_s: float = 30.0, max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[int, str], tuple[float, MediaRecord]] = OrderedDict()

    def get(self, user_id: int, media_id: str) -> MediaRecord | None:
        key = (user_id, media_id)
        found = self._entries.get(key)
        if found is None:
            return None
        if self._clock() >= found[0]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    def remember(self, user_id: int, record: MediaRecord) -> None:
        key = (user_id, record.id)
        self._entries[key] = (self._clock() + self._ttl_s, record)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
