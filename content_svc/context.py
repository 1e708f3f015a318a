"""What the content service's handlers need, built once by the composition root and passed in."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

from pingpull.bus import Bus
from pingpull.config import ContentSettings
from pingpull.db.engine import Database
from pingpull.ratelimit import TokenBucketLimiter
from pingpull.tokens import TokenSigner, TokenVerifier


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ContentMetrics:
    """Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pingpull_content_requests",
            "HTTP requests handled, by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pingpull_content_request_seconds",
            "Time to handle a request, by route.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.messages_sent = Counter(
            "pingpull_messages_sent",
            "Messages committed (not counting idempotent replays).",
            registry=self.registry,
        )
        self.idempotent_replays = Counter(
            "pingpull_idempotent_replays", "Sends answered with an existing message.", registry=self.registry
        )
        self.signals_published = Counter(
            "pingpull_signals_published",
            "NEW frames published, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "pingpull_rate_limited", "Requests refused by a rate limit.", ["limit"], registry=self.registry
        )


@dataclass
class Readiness:
    """Mutable on purpose: the composition root flips it when a drain starts."""

    draining: bool = False


@dataclass
class ContentContext:
    settings: ContentSettings
    database: Database
    bus: Bus
    signer: TokenSigner
    verifier: TokenVerifier
    send_limiter: TokenBucketLimiter
    open_registration: bool = False
    metrics: ContentMetrics = field(default_factory=ContentMetrics)
    readiness: Readiness = field(default_factory=Readiness)
    clock_ms: Callable[[], int] = wall_clock_ms
    # Other services' registries in this process, rendered by this service's /metrics too.
    extra_registries: list[CollectorRegistry] = field(default_factory=list)
    # Called when pushes became due now (a recipient device nobody holds): wakes an in-process worker.
    on_push_due: Callable[[], None] | None = None
