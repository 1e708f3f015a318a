"""What the content service's handlers need, built once by the composition root and passed in."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

from content_svc.media.access import AccessCache
from content_svc.media.blobs import BlobStore
from pingpull.bus import Bus
from pingpull.config import ContentSettings, MediaSettings
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
        self.media_bytes_in = Counter(
            "pingpull_media_received_bytes",
            "Media bytes received by uploads, by kind (raw, tus).",
            ["kind"],
            registry=self.registry,
        )
        self.media_uploads = Counter(
            "pingpull_media_uploads",
            "Uploads that ended, by kind and outcome (stored, failed, checksum_mismatch, ...).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.media_bytes_out = Counter(
            "pingpull_media_served_bytes", "Media bytes this process sent to clients.", registry=self.registry
        )
        self.media_fast_answers = Counter(
            "pingpull_media_fast_answers",
            "Downloads answered by the fast lane (access and token already in memory, one read).",
            registry=self.registry,
        )
        self.fast_lane_answers = Counter(
            "pingpull_fast_lane_answers",
            "Inbox pulls, acks and sends answered by a fast lane (token and device already in memory).",
            ["route"],
            registry=self.registry,
        )
        self.media_zero_copy_bytes = Counter(
            "pingpull_media_zero_copy_bytes",
            "Media bytes sent with sendfile from the page cache (part of the served bytes).",
            registry=self.registry,
        )
        self.media_redirects = Counter(
            "pingpull_media_redirects", "Downloads answered with a presigned URL.", registry=self.registry
        )
        self.uploads_reaped = Counter(
            "pingpull_uploads_reaped", "Expired resumable uploads removed.", registry=self.registry
        )
        self.rate_limited = Counter(
            "pingpull_rate_limited", "Requests refused by a rate limit.", ["limit"], registry=self.registry
        )


@dataclass
class Readiness:
    """Mutable on purpose: the composition root flips it when a drain starts."""

    draining: bool = False


@dataclass
class MediaContext:
    """Blob storage and the upload limits; built by the composition root from `media` settings."""

    settings: MediaSettings
    blobs: BlobStore
    upload_limiter: TokenBucketLimiter
    upload_bytes_limiter: TokenBucketLimiter
    access_cache: AccessCache = field(default_factory=AccessCache)

    @classmethod
    def build(cls, settings: MediaSettings, blobs: BlobStore) -> MediaContext:
        return cls(
            settings=settings,
            blobs=blobs,
            upload_limiter=TokenBucketLimiter(settings.upload_rate_per_s, settings.upload_burst),
            upload_bytes_limiter=TokenBucketLimiter(
                settings.upload_quota_refill_bytes_per_s, settings.upload_quota_bytes
            ),
            access_cache=AccessCache(ttl_s=settings.access_cache_ttl_s),
        )


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
    # None: media routes answer 503 (a content service built without storage, as in some unit tests).
    media: MediaContext | None = None
    # Called when pushes became due now (a recipient device nobody holds): wakes an in-process worker.
    on_push_due: Callable[[], None] | None = None
