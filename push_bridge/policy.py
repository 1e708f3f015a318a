"""When to push, when not to, and what to do with each outcome: pure functions, no I/O.

The rules, in order:
- a job whose device has no push token, or has acked the job's seq, is dropped without a push;
- a device that was pushed and has not acked since is not pushed again until `repush_after_s`
  has passed: the wake-up it got makes it pull everything, so a burst of messages to a closed app
  costs one push (and Apple throttles background pushes anyway);
- a device is never pushed twice within `min_push_interval_s`, even if it acked in between
  (the providers' per-device limits);
- otherwise, push.
After the provider answers: delivered -> done (or, if more messages came meanwhile, wait for the
ack or the repush time); dead token -> remove it, done; invalid token -> remove it only if the
same provider configuration is proven to work (it delivered to another token recently), else
keep the token and retry the job like a failure while the configuration is suspected
(docs/decisions/0002-*.md); retry -> capped exponential backoff with full jitter, never sooner
than the provider's Retry-After; rejected -> done.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from push_bridge.providers.base import Outcome, PushOutcome


class Verdict(enum.Enum):
    PUSH = "push"
    DROP_NO_TOKEN = "no_token"
    DROP_ACKED = "acked"
    DEFER = "deferred"  # pushed recently and not acked since


@dataclass(frozen=True, slots=True)
class JobView:
    """A claimed job joined with its device's state, as the worker read it."""

    device_id: int
    seq: int
    attempts: int
    has_token: bool
    acked_seq: int
    last_push_at_ms: int | None
    last_push_seq: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    not_before_ms: int | None = None  # for DEFER


def decide(job: JobView, now_ms: int, repush_after_ms: int, min_interval_ms: int = 0) -> Decision:
    if not job.has_token:
        return Decision(Verdict.DROP_NO_TOKEN)
    if job.acked_seq >= job.seq:
        return Decision(Verdict.DROP_ACKED)
    if (
        job.last_push_at_ms is not None
        and job.last_push_seq is not None
        and job.acked_seq < job.last_push_seq
    ):
        repush_at = job.last_push_at_ms + repush_after_ms
        if now_ms < repush_at:
            return Decision(Verdict.DEFER, not_before_ms=repush_at)
    if job.last_push_at_ms is not None and now_ms < job.last_push_at_ms + min_interval_ms:
        # Acked, but pushed very recently: the providers' per-device limits (APNs throttles background
        # pushes, FCM caps a device's rate) are kept by waiting; the job still carries the newest seq.
        return Decision(Verdict.DEFER, not_before_ms=job.last_push_at_ms + min_interval_ms)
    return Decision(Verdict.PUSH)


class Next(enum.Enum):
    DONE = "done"
    REMOVE_TOKEN = "remove_token"
    RETRY = "retry"
    # An invalid-token answer while nothing proves our configuration: keep the token, alert, retry.
    SUSPECT_CONFIG = "suspect_config"
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class Followup:
    next: Next
    not_before_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float = 1.0
    cap_s: float = 300.0
    max_attempts: int = 12

    def delay_s(self, attempts: int, rng: random.Random) -> float:
        """Full jitter: uniform over [0, min(cap, initial * 2**(attempts-1))]."""
        ceiling = min(self.cap_s, self.initial_s * 2 ** max(0, attempts - 1))
        return rng.uniform(0, ceiling)


def after_send(
    outcome: PushOutcome,
    attempts: int,
    now_ms: int,
    retry: RetryPolicy,
    rng: random.Random,
    *,
    config_proven: bool = False,
) -> Followup:
    """What follows one provider answer. `config_proven`: the same provider and environment
    delivered to some token recently (see push_bridge.health), which makes an invalid-token answer
    the token's fault rather than our configuration's."""
    if outcome.outcome is Outcome.DELIVERED or outcome.outcome is Outcome.REJECTED:
        return Followup(Next.DONE)
    if outcome.outcome is Outcome.TOKEN_DEAD:
        return Followup(Next.REMOVE_TOKEN)
    if outcome.outcome is Outcome.TOKEN_INVALID and config_proven:
        return Followup(Next.REMOVE_TOKEN)
    if attempts >= retry.max_attempts:
        return Followup(Next.GIVE_UP)  # the job ends; a suspect token is still kept
    delay_s = retry.delay_s(attempts, rng)
    if outcome.retry_after_s is not None:
        # Never earlier than the provider asked; jitter on top spreads a fleet of retries.
        delay_s = max(delay_s, outcome.retry_after_s)
    nxt = Next.SUSPECT_CONFIG if outcome.outcome is Outcome.TOKEN_INVALID else Next.RETRY
    return Followup(nxt, not_before_ms=now_ms + int(delay_s * 1000))
