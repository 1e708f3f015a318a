"""What a media download answers, decided in one place for the two paths that serve it.

`GET /v1/media/{id}` is served by the Quart route (content_svc/routes/media.py) and, when every
answer it needs is already in memory, by the fast lane in front of Quart (fast_lane.py). Both
call these functions, so the status, the headers and the bytes chosen cannot drift apart. No I/O
here: a media record and the request's header values in, a decision out.
"""

from __future__ import annotations

from dataclasses import dataclass

from content_svc.media import ranges
from content_svc.media.errors import RangeNotSatisfiable
from content_svc.media.ranges import HeaderLookup
from content_svc.media.records import MediaRecord
from pingpull.config import MediaSettings


@dataclass(frozen=True, slots=True)
class Span:
    """Answer `status` with bytes [start, stop) of the object: a 200 of the whole, or a 206 of one range."""

    status: int
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class Multipart:
    """A 206 multipart/byteranges answer of several ranges."""

    framing: ranges.MultipartByteranges


def validator_headers(record: MediaRecord, settings: MediaSettings) -> dict[str, str]:
    """The headers every answer about this media carries (200, 206 and 304 alike)."""
    return {
        "ETag": ranges.strong_etag(record.sha256),
        "Accept-Ranges": "bytes",
        "Cache-Control": f"private, max-age={settings.cache_max_age_s}, immutable",
        "X-Content-Type-Options": "nosniff",
        # Media is user content: never let a browser run it in our origin.
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }


def not_modified(request_headers: HeaderLookup, headers: dict[str, str]) -> bool:
    """True when `If-None-Match` names this media's ETag: answer 304 with `headers` and no body."""
    return ranges.if_none_match_hit(request_headers.get("If-None-Match"), headers["ETag"])


def body_plan(
    record: MediaRecord, request_headers: HeaderLookup, settings: MediaSettings, headers: dict[str, str]
) -> Span | Multipart:
    """Which bytes to send, after `Range` and `If-Range`; adds Content-Type (and Content-Range for
    one range) to `headers`. Raises `RangeNotSatisfiable` (416) when no range overlaps the media."""
    size = record.size
    decision: ranges.RangeDecision = ranges.Whole()
    if ranges.if_range_allows_partial(request_headers.get("If-Range"), headers["ETag"]):
        decision = ranges.parse_range(request_headers.get("Range"), size, max_ranges=settings.max_ranges)
    if isinstance(decision, ranges.Unsatisfiable):
        raise RangeNotSatisfiable(size)
    if isinstance(decision, ranges.Partial) and len(decision.ranges) > 1:
        framing = ranges.MultipartByteranges(
            decision.ranges, size, record.content_type, ranges.new_boundary()
        )
        headers["Content-Type"] = framing.content_type_header
        return Multipart(framing)
    headers["Content-Type"] = record.content_type
    if isinstance(decision, ranges.Partial):
        (one,) = decision.ranges
        headers["Content-Range"] = one.content_range(size)
        return Span(206, one.start, one.stop)
    return Span(200, 0, size)
