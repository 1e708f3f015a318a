"""Is this provider configuration known to work? Pure state, no I/O: the clock is passed in.

APNs answers `BadDeviceToken` / `DeviceTokenNotForTopic` (and FCM `SENDER_ID_MISMATCH` or an
invalid-token `INVALID_ARGUMENT`) both for a token that is dead *and* for every token when our own
topic, environment host or project is wrong. The two cases are told apart the way production
senders do: if the same provider and environment delivered to some token within
`proof_window_ms`, the configuration works and the refused token is the problem; if not, nothing
proves the configuration, so the token is kept and the configuration is suspected (alert).

A scope is (provider, environment): APNs sandbox and production are different hosts with
different token spaces, so a delivery in one proves nothing about the other.

The proof lives in the worker's memory: a freshly started worker has none until its first
delivery, so right after a start it keeps tokens it would have removed (they are retried and
removed on a later attempt). Erring that way is the point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Scope = tuple[str, str]  # (provider, environment)


@dataclass(slots=True)
class ProviderHealth:
    proof_window_ms: int
    _last_delivered_ms: dict[Scope, int] = field(default_factory=dict)
    _suspected: set[Scope] = field(default_factory=set)

    def delivered(self, scope: Scope, now_ms: int) -> bool:
        """Record a delivery; True if it clears a suspected configuration (it works after all)."""
        previous = self._last_delivered_ms.get(scope)
        self._last_delivered_ms[scope] = now_ms if previous is None else max(previous, now_ms)
        if scope in self._suspected:
            self._suspected.discard(scope)
            return True
        return False

    def proven(self, scope: Scope, now_ms: int) -> bool:
        """Did this scope deliver to some token within the proof window?"""
        last = self._last_delivered_ms.get(scope)
        return last is not None and now_ms - last <= self.proof_window_ms

    def suspect(self, scope: Scope) -> bool:
        """Mark the configuration suspected; True if it was not already (alert once per episode)."""
        if scope in self._suspected:
            return False
        self._suspected.add(scope)
        return True

    def suspected(self, scope: Scope) -> bool:
        return scope in self._suspected
