"""Building the push worker from settings, and running it."""

from __future__ import annotations

import logging

import trio

from pingpull import logs
from pingpull.config import PushSettings
from pingpull.db.engine import Database
from push_bridge import payloads, policy
from push_bridge.errors import ProviderConfigError
from push_bridge.providers.base import PushProvider
from push_bridge.worker import PushWorker, WorkerSettings, log_providers

log = logging.getLogger("pingpull.push")


def worker_settings(settings: PushSettings) -> WorkerSettings:
    return WorkerSettings(
        poll_interval_s=settings.poll_interval_s,
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
        claim_ttl_s=settings.claim_ttl_s,
        repush_after_s=settings.repush_after_s,
        retry=policy.RetryPolicy(settings.retry_initial_s, settings.retry_max_s, settings.max_attempts),
        payload=payloads.PayloadOptions(
            apns_topic=settings.apns_topic or payloads.DEFAULT_APNS_TOPIC,
            visible_alert=settings.visible_alert,
            expiry_s=settings.expiry_s,
        ),
    )


def build_worker(
    settings: PushSettings, database: Database, providers: dict[str, PushProvider] | None = None
) -> PushWorker:
    if providers is None:
        if settings.provider != "log":
            raise ProviderConfigError("live providers are opened by open_live_providers()")
        providers = log_providers()
    return PushWorker(database, providers, worker_settings(settings))


async def run_push(
    worker: PushWorker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    logs.event(
        log, "push_worker_started", providers=",".join(sorted(worker.providers)), claim_id=worker.claim_id
    )
    await worker.run(task_status=task_status)
