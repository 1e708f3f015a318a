"""The composition root: builds the kernel (bridge, database, bus, keys) and starts services on it.

Only this module and the CLI import the services; services import only the kernel. One process may
run any subset of {content, signal, push}; the embedded default runs all of them on SQLite with the
in-process bus.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from content_svc.context import ContentContext, MediaContext
from content_svc.media.blobs import BlobStore, LocalBlobStore
from content_svc.service import run_content
from pingpull import logs
from pingpull.aio import AsyncioBridge, open_asyncio_bridge
from pingpull.bus import Bus, MemoryBus
from pingpull.bus.heads import database_head_loader
from pingpull.bus.redis import RedisBus, open_redis_bus
from pingpull.config import Settings
from pingpull.db import migrate
from pingpull.db.engine import Database, open_database
from pingpull.errors import ConfigError
from pingpull.metrics import serve_metrics
from pingpull.ratelimit import TokenBucketLimiter
from pingpull.tokens import KeyRing, ensure_keys, load_keys
from push_bridge.errors import ProviderConfigError
from push_bridge.service import build_worker, open_live_providers, run_push
from push_bridge.worker import PushWorker
from signal_svc.gateway import Gateway
from signal_svc.service import run_signal

log = logging.getLogger("pingpull")

SERVICES = ("content", "signal", "push")


@dataclass(frozen=True)
class Kernel:
    settings: Settings
    bridge: AsyncioBridge
    database: Database | None
    bus: Bus
    keys: KeyRing


def prepare(settings: Settings) -> None:
    """Synchronous start-up work, run before trio: checks, data dir, migrations where automatic."""
    tls = settings.tls_files
    if tls is not None:
        tls.server_context(["h2", "http/1.1"])  # a bad certificate or key stops us here, clearly
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    if settings.is_embedded or settings.database.migrate_on_start:
        migrate.upgrade(settings.effective_database_url)


def load_key_ring(settings: Settings) -> KeyRing:
    # Only the embedded mode invents a key: replicas that each made their own would reject each
    # other's tokens. Elsewhere an operator runs `pingpull keys create` once and distributes the files.
    if settings.is_embedded:
        return ensure_keys(settings.keys_dir)
    return load_keys(settings.keys_dir)


@asynccontextmanager
async def open_kernel(settings: Settings, *, with_database: bool = True) -> AsyncIterator[Kernel]:
    """Bridge, database (unless a gateway-only process), bus and keys, closed in reverse order."""
    keys = load_key_ring(settings)
    async with open_asyncio_bridge() as bridge, contextlib.AsyncExitStack() as stack:
        database: Database | None = None
        if with_database:
            database = await stack.enter_async_context(
                open_database(
                    settings.effective_database_url,
                    bridge,
                    pool_size=settings.database.pool_size,
                    pool_timeout_s=settings.database.pool_timeout_s,
                    echo=settings.database.echo,
                )
            )
        # Where the process has the database, heads the bus lacks (after a restart) come from it.
        loader = database_head_loader(database) if database is not None else None
        bus: Bus
        if settings.redis_url:
            bus = await stack.enter_async_context(
                open_redis_bus(settings.redis_url, prefix=settings.redis_prefix, head_loader=loader)
            )
        else:
            bus = MemoryBus(head_loader=loader)
        yield Kernel(settings=settings, bridge=bridge, database=database, bus=bus, keys=keys)


def content_context(kernel: Kernel) -> ContentContext:
    settings = kernel.settings
    if kernel.database is None:
        raise ConfigError("the content service needs a database")
    return ContentContext(
        settings=settings.content,
        database=kernel.database,
        bus=kernel.bus,
        signer=kernel.keys.signer(
            settings.tokens.signing_kid,
            ttl_s=settings.tokens.access_token_ttl_s,
            issuer=settings.tokens.issuer,
        ),
        verifier=kernel.keys.verifier(issuer=settings.tokens.issuer, leeway_s=settings.tokens.clock_leeway_s),
        send_limiter=TokenBucketLimiter(settings.content.send_rate_per_s, settings.content.send_burst),
        open_registration=settings.content.registration == "open"
        or (settings.content.registration == "auto" and settings.is_embedded),
        media=MediaContext.build(settings.media, blob_store(settings)),
    )


def blob_store(settings: Settings) -> BlobStore:
    if settings.media.backend == "s3":
        from content_svc.media.s3 import S3BlobStore  # boto3 is slow to import; only when used

        return S3BlobStore(settings.media, settings.spool_dir)
    return LocalBlobStore(settings.media_dir)


def gateway(kernel: Kernel) -> Gateway:
    tokens = kernel.settings.tokens
    tls = kernel.settings.tls_files
    return Gateway(
        settings=kernel.settings.signal,
        bus=kernel.bus,
        verifier=kernel.keys.verifier(issuer=tokens.issuer, leeway_s=tokens.clock_leeway_s),
        tls=tls.server_context(["http/1.1"]) if tls is not None else None,
    )


async def serve(
    settings: Settings,
    services: Collection[str] = SERVICES,
    *,
    task_status: trio.TaskStatus[dict[str, list[str]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the chosen services until SIGINT/SIGTERM; reports {service: [urls]} once all listen."""
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise ConfigError(f"unknown service(s): {', '.join(sorted(unknown))}")
    runnable = list(dict.fromkeys(services))

    shutdown = trio.Event()
    needs_database = any(name in runnable for name in ("content", "push"))
    async with (
        open_kernel(settings, with_database=needs_database) as kernel,
        contextlib.AsyncExitStack() as background_stack,
        trio.open_nursery() as background,
    ):
        urls: dict[str, list[str]] = {}
        context: ContentContext | None = None
        worker: PushWorker | None = None
        if "push" in runnable:
            worker = await push_worker(kernel, background_stack)
        listens_for_wakes = worker is not None and "content" not in runnable
        if listens_for_wakes and worker is not None:
            # A push bridge on its own is woken by content services in other processes (Redis).
            kernel.bus.on_push_wake(worker.wake)
        if ("signal" in runnable or listens_for_wakes) and isinstance(kernel.bus, RedisBus):
            await background.start(kernel.bus.subscriber.run)
        async with trio.open_nursery() as running:
            # Each service returns by itself once `shutdown` is set and it has drained.
            if worker is not None:
                await running.start(_until, shutdown, run_push, worker)
            if "content" in runnable:
                context = content_context(kernel)
                if worker is not None:
                    context.on_push_due = worker.wake  # same process: wake it directly
                    context.extra_registries.append(worker.metrics.registry)
                urls["content"] = await running.start(run_content, context, shutdown, settings.tls_files)
            elif worker is not None:
                urls["push_metrics"] = [
                    await running.start(
                        _until,
                        shutdown,
                        serve_metrics,
                        [worker.metrics.registry],
                        settings.host,
                        settings.push.metrics_port,
                    )
                ]
            if "signal" in runnable:
                urls["signal"] = await running.start(run_signal, gateway(kernel), shutdown)
            background.start_soon(_stop_on_signal, shutdown, context)
            fields: dict[str, Any] = {f"{name}_url": ",".join(u) for name, u in urls.items()}
            logs.event(log, "ready", **fields)
            task_status.started(urls)
        background.cancel_scope.cancel()


async def push_worker(kernel: Kernel, stack: contextlib.AsyncExitStack) -> PushWorker:
    """The worker with the configured providers (opened on `stack`, closed with it)."""
    assert kernel.database is not None
    settings = kernel.settings.push
    providers = None
    if settings.provider == "live":
        try:
            providers = await stack.enter_async_context(open_live_providers(settings, kernel.bridge))
        except ProviderConfigError as exc:
            raise ConfigError(str(exc)) from exc
    return build_worker(settings, kernel.database, providers)


async def _until(
    shutdown: trio.Event,
    run: Callable[..., Awaitable[None]],
    *args: object,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a service that has no drain of its own until `shutdown` is set, then cancel it."""
    async with trio.open_nursery() as nursery:
        task_status.started(await nursery.start(partial(run, *args)))
        await shutdown.wait()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(shutdown: trio.Event, context: ContentContext | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logs.event(log, "shutdown_requested", signal=signal.Signals(signum).name)
            if context is not None:
                context.readiness.draining = True
            shutdown.set()
            return
