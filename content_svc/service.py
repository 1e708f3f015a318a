"""Serving the content app with hypercorn's trio worker (HTTP/1.1 and h2c on one port)."""

from __future__ import annotations

import logging
import socket

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from content_svc.app import create_app
from content_svc.context import ContentContext
from content_svc.media.reaper import run_upload_reaper
from pingpull import logs
from pingpull.tls import TlsFiles

log = logging.getLogger("pingpull.content")


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(ctx: ContentContext, tls: TlsFiles | None = None) -> HypercornConfig:
    settings = ctx.settings
    config = HypercornConfig()
    port = settings.port
    if tls is not None:
        tls.server_context(["h2", "http/1.1"])  # fail at start on a bad cert/key, not at the first handshake
        config.certfile, config.keyfile = str(tls.cert), str(tls.key)
        # HTTP/3 on the same port number over UDP; hypercorn advertises it with Alt-Svc. Port 0 would
        # give TCP and UDP different numbers, so pick one that is free for both.
        port = port or _free_tcp_and_udp_port(settings.host)
        config.quic_bind = [bind_address(settings.host, port)]
    config.bind = [bind_address(settings.host, port)]
    config.accesslog = None  # our request log replaces it (and never prints query strings)
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.shutdown_timeout_s
    config.keep_alive_timeout = settings.keep_alive_timeout_s  # enforced by content_svc/keep_alive.py
    config.h11_max_incomplete_size = 16 * 1024
    config.backlog = settings.listen_backlog
    return config


def _free_tcp_and_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both TCP and UDP")


async def run_content(
    ctx: ContentContext,
    shutdown: trio.Event,
    tls: TlsFiles | None = None,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set; reports the bound URLs (port 0 picks a free one) when listening."""
    app = create_app(ctx)
    config = hypercorn_config(ctx, tls)
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(_serve, app, config, shutdown, nursery.cancel_scope)
            nursery.start_soon(run_upload_reaper, ctx)
            logs.event(log, "content_listening", urls=",".join(binds))
            task_status.started(binds)
    finally:
        if ctx.media is not None:
            with trio.CancelScope(shield=True):
                await ctx.media.blobs.aclose()  # kept descriptors, S3 connection pools


async def _serve(
    app: object,
    config: HypercornConfig,
    shutdown: trio.Event,
    then_cancel: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)  # type: ignore[arg-type]
    then_cancel.cancel()  # the background loops end with the server
