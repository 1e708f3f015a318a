"""A per-key token bucket: pure, clock injected, so tests need no sleeping.

Per process: with N content replicas behind a load balancer a user gets up to N times the rate. That
is the right trade for a limit whose job is to stop a runaway client, not to bill; a shared (Redis)
limiter would put a network hop on every send.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class TokenBucketLimiter:
    """`rate_per_s` tokens per second, at most `burst` saved up; an action costs one token unless
    told otherwise (a byte quota charges its size)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if not rate_per_s > 0 or burst < 1:  # `not >` also rejects NaN
            raise ValueError("rate_per_s must be positive and burst at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[int, _Bucket] = {}

    def try_acquire(self, key: int, cost: float = 1.0) -> float:
        """Take `cost` tokens for `key` (at most `burst`). Returns 0.0 on success, else the seconds
        until that many are available."""
        if not 0 < cost <= self._burst:
            raise ValueError("cost must be positive and at most the burst")
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full_buckets(now)
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        else:
            # A clock that stepped back refills nothing; re-basing on it never locks a user out.
            elapsed = max(0.0, now - bucket.updated_at)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.updated_at = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self._rate

    def _forget_full_buckets(self, now: float) -> None:
        # A bucket that has refilled completely carries no information: dropping it changes nothing.
        full_after_s = self._burst / self._rate
        stale = [k for k, b in self._buckets.items() if now - b.updated_at >= full_after_s]
        for key in stale:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            # Still full of active keys: drop the oldest half rather than grow without bound.
            by_age = sorted(self._buckets, key=lambda k: self._buckets[k].updated_at)
            for key in by_age[: max(1, len(by_age) // 2)]:
                del self._buckets[key]
