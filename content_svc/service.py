"""Serving the content app with hypercorn's trio worker (HTTP/1.1 and h2c on one port)."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from content_svc.app import create_app
from content_svc.context import ContentContext
from pingpull import logs

log = logging.getLogger("pingpull.content")


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(ctx: ContentContext) -> HypercornConfig:
    settings = ctx.settings
    config = HypercornConfig()
    config.bind = [bind_address(settings.host, settings.port)]
    config.accesslog = None  # our request log replaces it (and never prints query strings)
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.shutdown_timeout_s
    # Phones reuse connections across bursts of activity; a short keep-alive costs a TLS handshake each time.
    config.keep_alive_timeout = 75
    config.h11_max_incomplete_size = 16 * 1024
    return config


async def run_content(
    ctx: ContentContext,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set; reports the bound URLs (port 0 picks a free one) when listening."""
    app = create_app(ctx)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_serve, app, hypercorn_config(ctx), shutdown)
        logs.event(log, "content_listening", urls=",".join(binds))
        task_status.started(binds)


async def _serve(
    app: object, config: HypercornConfig, shutdown: trio.Event, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)  # type: ignore[arg-type]
