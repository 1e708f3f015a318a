"""A content service running inside the test's trio run, on a free loopback port, with real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from content_svc.context import ContentContext
from content_svc.service import run_content
from pingpull import compose
from pingpull.bus.redis import RedisBus
from pingpull.client.content import ContentClient
from pingpull.config import Settings, build_settings
from signal_svc.gateway import Gateway
from signal_svc.service import run_signal


@dataclass
class LiveContent:
    base_url: str
    context: ContentContext
    kernel: compose.Kernel
    http: httpx.AsyncClient
    signal_url: str = ""
    gateway: Gateway | None = None

    def client(self, token: str | None = None) -> ContentClient:
        return ContentClient(self.http, token)

    async def account(self, handle: str) -> tuple[ContentClient, dict[str, Any]]:
        created = await self.client().create_account(handle)
        return self.client(created["token"]), created


def settings_for_test(
    database_url: str,
    data_dir: Path,
    signal: dict[str, Any] | None = None,
    redis: tuple[str, str] | None = None,
    media: dict[str, Any] | None = None,
    **content: Any,
) -> Settings:
    """Settings on a free port; `redis` is (url, key prefix) for the Redis bus."""
    signal = signal or {}
    redis_settings = {"redis_url": redis[0], "redis_prefix": redis[1]} if redis else {}
    return build_settings(
        {
            "data_dir": str(data_dir),
            "database_url": database_url,
            **redis_settings,
            "content": {"port": 0, "registration": "open", **content},
            "signal": {"port": 0, **signal},
            **({"media": media} if media else {}),
        }
    )


@asynccontextmanager
async def live_content(settings: Settings, *, with_gateway: bool = False) -> AsyncIterator[LiveContent]:
    """The content service (and optionally the gateway on the same bus) inside this trio run."""
    shutdown = trio.Event()
    async with compose.open_kernel(settings) as kernel, trio.open_nursery() as nursery:
        context = compose.content_context(kernel)
        binds = await nursery.start(run_content, context, shutdown)
        signal_url, gateway = "", None
        if with_gateway:
            if isinstance(kernel.bus, RedisBus):
                await nursery.start(kernel.bus.subscriber.run)
            gateway = compose.gateway(kernel)
            signal_url = (await nursery.start(run_signal, gateway, shutdown))[0]
        base_url = binds[0]
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
            try:
                yield LiveContent(base_url, context, kernel, http, signal_url, gateway)
            finally:
                shutdown.set()
                nursery.cancel_scope.cancel()
