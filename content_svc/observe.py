"""One request's trace: the Prometheus counters and histogram, and the structured request log line.

Written once for every path that answers a request (the Quart app's after-request hook and the media
fast lane), so dashboards and logs cannot tell, or miss, which one served it.
"""

from __future__ import annotations

import logging

from content_svc.auth import Principal
from content_svc.context import ContentMetrics
from pingpull import logs

log = logging.getLogger("pingpull.content")


def observe_request(
    metrics: ContentMetrics,
    *,
    method: str,
    route: str,
    path: str,
    status: int,
    elapsed_s: float,
    principal: Principal | None,
    http_version: str,
) -> None:
    metrics.requests.labels(method, route, str(status)).inc()
    metrics.latency.labels(method, route).observe(elapsed_s)
    # The path, never the query string: tokens may travel there. No bodies, no headers.
    logs.event(
        log,
        "request",
        method=method,
        route=route,
        path=path,
        status=status,
        duration_ms=round(elapsed_s * 1000, 2),
        user_id=principal.user_id if principal else None,
        device_id=principal.device_id if principal else None,
        http=http_version,
    )
