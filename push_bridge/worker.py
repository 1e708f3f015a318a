"""The push worker: claim due jobs, apply the policy, send, record the outcome.

One loop per worker process. It claims a batch, decides per job (pure policy), sends the pushes of
the batch concurrently (bounded), finishes each job in its own small transaction, and sleeps until
woken (the content service saw a device nobody holds) or `poll_interval_s` passes.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pingpull import logs
from pingpull.db.engine import Database, DatabaseUnavailable
from push_bridge import payloads, policy, store
from push_bridge.health import ProviderHealth
from push_bridge.providers.base import Outcome, PushOutcome, PushProvider, PushRequest
from push_bridge.providers.log import LogProvider

log = logging.getLogger("pingpull.push")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class PushMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "pingpull_push_decisions", "Claimed jobs by policy verdict.", ["verdict"], registry=self.registry
        )
        self.outcomes = Counter(
            "pingpull_push_outcomes",
            "Provider answers by provider, outcome and reason.",
            ["provider", "outcome", "reason"],
            registry=self.registry,
        )
        self.tokens_removed = Counter(
            "pingpull_push_tokens_removed", "Dead push tokens removed.", ["provider"], registry=self.registry
        )
        self.tokens_kept = Counter(
            "pingpull_push_tokens_kept_suspect_config",
            "Invalid-token answers whose token was kept: nothing proved the provider configuration.",
            ["provider", "environment", "reason"],
            registry=self.registry,
        )
        self.config_suspected = Gauge(
            "pingpull_push_config_suspected",
            "1 while a provider/environment answers invalid-token with no recent delivery (alert on it).",
            ["provider", "environment"],
            registry=self.registry,
        )
        self.gave_up = Counter(
            "pingpull_push_gave_up", "Jobs dropped after max attempts.", registry=self.registry
        )
        self.send_seconds = Histogram(
            "pingpull_push_send_seconds",
            "Time for a provider to answer one push.",
            ["provider"],
            registry=self.registry,
        )


@dataclass(frozen=True)
class WorkerSettings:
    poll_interval_s: float = 2.0
    batch_size: int = 100
    concurrency: int = 64
    claim_ttl_s: float = 120.0
    repush_after_s: float = 600.0
    min_push_interval_s: float = 0.0
    # An invalid-token answer removes the token only if the provider delivered within this window.
    config_proof_window_s: float = 3600.0
    retry: policy.RetryPolicy = field(default_factory=policy.RetryPolicy)
    payload: payloads.PayloadOptions = field(default_factory=payloads.PayloadOptions)


class PushWorker:
    def __init__(
        self,
        database: Database,
        providers: Mapping[str, PushProvider],
        settings: WorkerSettings,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.database = database
        self.providers = dict(providers)
        self.settings = settings
        self.clock_ms = clock_ms
        self.rng = rng or random.Random()
        self.metrics = PushMetrics()
        self.claim_id = secrets.token_hex(8)
        self.health = ProviderHealth(proof_window_ms=int(settings.config_proof_window_s * 1000))
        self._wakeup = trio.Event()

    def wake(self) -> None:
        """Something became due now: run a pass at once instead of at the next poll."""
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            handled = 0
            try:
                handled = await self.run_once()
            except* DatabaseUnavailable as group:
                # Overloaded or unreachable database: try again at the next poll. Claims taken in this
                # pass expire after claim_ttl_s and are taken again (the worker must outlive this).
                logs.event(
                    log, "push_database_unavailable", level=logging.WARNING, error=str(group.exceptions[0])
                )
            if handled < self.settings.batch_size:
                with trio.move_on_after(self.settings.poll_interval_s):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()

    async def run_once(self) -> int:
        """One pass: claim a batch and handle it; returns how many jobs were claimed."""
        s = self.settings
        jobs = await self.database.transaction(
            store.claim_due,
            now_ms=self.clock_ms(),
            batch=s.batch_size,
            claim_ttl_ms=int(s.claim_ttl_s * 1000),
            claim_id=self.claim_id,
        )
        if jobs:
            limiter = trio.CapacityLimiter(s.concurrency)
            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(self._handle, job, limiter)
        return len(jobs)

    async def _handle(self, job: store.ClaimedJob, limiter: trio.CapacityLimiter) -> None:
        now_ms = self.clock_ms()
        view = policy.JobView(
            device_id=job.device_id,
            seq=job.seq,
            attempts=job.attempts,
            has_token=job.token is not None and job.provider is not None,
            acked_seq=job.acked_seq,
            last_push_at_ms=job.last_push_at_ms,
            last_push_seq=job.last_push_seq,
        )
        decision = policy.decide(
            view,
            now_ms,
            int(self.settings.repush_after_s * 1000),
            int(self.settings.min_push_interval_s * 1000),
        )
        self.metrics.decisions.labels(decision.verdict.value).inc()
        if decision.verdict is policy.Verdict.DEFER:
            assert decision.not_before_ms is not None
            await self.database.transaction(store.finish_deferred, job, decision.not_before_ms)
            return
        if decision.verdict is not policy.Verdict.PUSH:
            await self.database.transaction(store.finish_dropped, job, now_ms)
            return
        assert job.provider is not None and job.token is not None
        request = self._render(job, job.provider, job.token, now_ms)
        provider = self.providers.get(job.provider) or self.providers.get("log")
        if provider is None:
            logs.event(
                log, "push_no_provider", level=logging.WARNING, provider=job.provider, device_id=job.device_id
            )
            await self.database.transaction(store.finish_gone, job)
            return
        async with limiter:
            started = trio.current_time()
            outcome = await provider.send(request)
            self.metrics.send_seconds.labels(provider.name).observe(trio.current_time() - started)
        await self._record(job, request, provider, outcome, sent_at_ms=now_ms)

    def _render(self, job: store.ClaimedJob, provider: str, token: str, now_ms: int) -> PushRequest:
        options = self.settings.payload
        if provider == "apns":
            return payloads.apns_request(
                job.device_id, token, job.environment or "production", job.seq, now_ms // 1000, options
            )
        return payloads.fcm_request(job.device_id, token, job.seq, options)

    async def _record(
        self,
        job: store.ClaimedJob,
        request: PushRequest,
        provider: PushProvider,
        outcome: PushOutcome,
        *,
        sent_at_ms: int,
    ) -> None:
        self.metrics.outcomes.labels(provider.name, outcome.outcome.value, outcome.reason or "-").inc()
        now_ms = self.clock_ms()
        scope = (provider.name, request.environment)
        if outcome.outcome is Outcome.DELIVERED and self.health.delivered(scope, now_ms):
            self.metrics.config_suspected.labels(*scope).set(0)
            logs.event(log, "push_config_recovered", provider=scope[0], environment=scope[1])
        followup = policy.after_send(
            outcome,
            job.attempts + 1,
            now_ms,
            self.settings.retry,
            self.rng,
            config_proven=self.health.proven(scope, now_ms),
        )
        fields: dict[str, Any] = {
            "device_id": job.device_id,
            "provider": provider.name,
            "seq": job.seq,
            "reason": outcome.reason,
        }
        if followup.next is policy.Next.DONE:
            if outcome.outcome is Outcome.DELIVERED:
                await self.database.transaction(store.finish_delivered, job, now_ms)
            else:
                logs.event(log, "push_rejected", level=logging.WARNING, **fields)
                await self.database.transaction(store.finish_gone, job)
        elif followup.next is policy.Next.REMOVE_TOKEN:
            removed = await self.database.transaction(store.finish_token_dead, job, request.token, sent_at_ms)
            if removed:
                self.metrics.tokens_removed.labels(provider.name).inc()
            fields["removed"] = removed
            logs.event(log, "push_token_dead", **fields)
        elif followup.next is policy.Next.RETRY:
            assert followup.not_before_ms is not None
            await self.database.transaction(store.finish_retry, job, followup.not_before_ms)
        elif followup.next is policy.Next.SUSPECT_CONFIG:
            assert followup.not_before_ms is not None
            self._suspect_config(scope, outcome, fields)
            await self.database.transaction(store.finish_retry, job, followup.not_before_ms)
        else:
            if outcome.outcome is Outcome.TOKEN_INVALID:
                self._suspect_config(scope, outcome, fields)
            self.metrics.gave_up.inc()
            logs.event(log, "push_gave_up", level=logging.WARNING, attempts=job.attempts + 1, **fields)
            await self.database.transaction(store.finish_gone, job)

    def _suspect_config(self, scope: tuple[str, str], outcome: PushOutcome, fields: dict[str, Any]) -> None:
        """The token is kept: alert once per episode, count every kept token."""
        self.metrics.tokens_kept.labels(scope[0], scope[1], outcome.reason or "-").inc()
        if self.health.suspect(scope):
            self.metrics.config_suspected.labels(*scope).set(1)
            logs.event(
                log,
                "push_config_suspected",
                level=logging.ERROR,
                environment=scope[1],
                hint="invalid-token answers and no recent delivery: check the APNs topic and "
                "sandbox/production hosts, or the FCM project and service account; tokens are kept",
                **fields,
            )
        else:
            logs.event(log, "push_token_kept", environment=scope[1], **fields)


def log_providers() -> dict[str, PushProvider]:
    """The embedded default: APNs and FCM devices alike are 'pushed' to the log."""
    provider = LogProvider()
    return {"apns": provider, "fcm": provider, "log": provider}
