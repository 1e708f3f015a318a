"""Building the push worker from settings, and running it."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from pingpull import logs
from pingpull.aio import AsyncioBridge
from pingpull.config import PushSettings
from pingpull.db.engine import Database
from push_bridge import payloads, policy
from push_bridge.errors import ProviderConfigError
from push_bridge.providers.apns import PRODUCTION_HOST, SANDBOX_HOST, ApnsConfig, ApnsEndpoint, ApnsProvider
from push_bridge.providers.base import PushProvider
from push_bridge.providers.fcm import FCM_END_POINT_BASE, FcmConfig, FcmProvider
from push_bridge.worker import PushWorker, WorkerSettings, log_providers

log = logging.getLogger("pingpull.push")


def worker_settings(settings: PushSettings) -> WorkerSettings:
    return WorkerSettings(
        poll_interval_s=settings.poll_interval_s,
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
        claim_ttl_s=settings.claim_ttl_s,
        repush_after_s=settings.repush_after_s,
        min_push_interval_s=settings.min_push_interval_s,
        config_proof_window_s=settings.config_proof_window_s,
        retry=policy.RetryPolicy(settings.retry_initial_s, settings.retry_max_s, settings.max_attempts),
        payload=payloads.PayloadOptions(
            apns_topic=settings.apns_topic or payloads.DEFAULT_APNS_TOPIC,
            visible_alert=settings.visible_alert,
            expiry_s=settings.expiry_s,
        ),
    )


@asynccontextmanager
async def open_live_providers(
    settings: PushSettings, bridge: AsyncioBridge
) -> AsyncIterator[dict[str, PushProvider]]:
    """APNs and/or FCM as configured; at least one is required. Bad credentials fail here, at start."""
    providers: dict[str, PushProvider] = {}
    try:
        if settings.apns_key_file:
            context = None
            if settings.apns_ca_file:
                context = ssl.create_default_context(cafile=settings.apns_ca_file)
                context.set_alpn_protocols(["h2"])
            config = ApnsConfig(
                key_id=settings.apns_key_id,
                team_id=settings.apns_team_id,
                topic=settings.apns_topic,
                key_file=settings.apns_key_file,
                production=ApnsEndpoint.parse(settings.apns_production_host, ApnsEndpoint(PRODUCTION_HOST)),
                sandbox=ApnsEndpoint.parse(settings.apns_sandbox_host, ApnsEndpoint(SANDBOX_HOST)),
            )
            providers["apns"] = await ApnsProvider.open(bridge, config, ssl_context=context)
        if settings.fcm_service_account_file:
            fcm = FcmConfig(
                service_account_file=settings.fcm_service_account_file,
                project_id=settings.fcm_project_id,
                endpoint_base=settings.fcm_endpoint_base or FCM_END_POINT_BASE,
            )
            providers["fcm"] = FcmProvider(fcm)
        if not providers:
            raise ProviderConfigError(
                "push.provider = live needs push.apns_key_file and/or push.fcm_service_account_file"
            )
        yield providers
    finally:
        with trio.CancelScope(shield=True):
            for provider in providers.values():
                await provider.aclose()


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
