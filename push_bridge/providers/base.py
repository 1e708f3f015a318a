"""What every push provider does: take one content-free wake-up, report one outcome.

The worker never sees a provider's exceptions: each provider translates its library's answers and
failures into a `PushOutcome` at this boundary, so the policy that decides what happens next (done,
drop the token, retry when) is pure and shared.
"""

from __future__ import annotations

import abc
import email.utils
import enum
import time
from dataclasses import dataclass, field
from typing import Any


class Outcome(enum.Enum):
    DELIVERED = "delivered"  # the provider accepted it; the job is done
    TOKEN_DEAD = "token_dead"  # unregistered (APNs 410, FCM UNREGISTERED): remove the token, the job ends
    # The provider refused the token for this app or environment (APNs 400 BadDeviceToken,
    # DeviceTokenNotForTopic; FCM INVALID_ARGUMENT about the token, SENDER_ID_MISMATCH). Either the
    # token is dead or OUR topic / environment / project is wrong, which would answer the same for
    # every token of the fleet: the worker decides which (see docs/decisions/0002-*.md).
    TOKEN_INVALID = "token_invalid"
    RETRY = "retry"  # 429, 5xx, timeouts, connection failures: try again later
    REJECTED = "rejected"  # a permanent refusal that is not about the token (payload, auth): the job ends


@dataclass(frozen=True, slots=True)
class PushRequest:
    """One wake-up for one device, already rendered for its provider by push_bridge.payloads."""

    device_id: int
    provider: str  # "apns" | "fcm" | "log"
    token: str
    environment: str  # "production" | "sandbox" (APNs)
    seq: int
    # Provider-specific, pure-data rendering (APNs: headers + JSON payload; FCM: the v1 message).
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PushOutcome:
    outcome: Outcome
    # Provider's reason string ("Unregistered", "UNREGISTERED", "TooManyRequests", ...), for metrics/logs.
    reason: str = ""
    # Honoured for RETRY when the provider said when (Retry-After), else the worker's backoff decides.
    retry_after_s: float | None = None
    status: int | None = None


class PushProvider(abc.ABC):
    name: str

    @abc.abstractmethod
    async def send(self, request: PushRequest) -> PushOutcome:
        """Send one push; never raises for provider answers or network failures (only cancellation)."""

    async def aclose(self) -> None:  # noqa: B027 - providers without resources need not override
        """Release connections and threads."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
