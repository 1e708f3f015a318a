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
from pingpull.client.content import ContentClient
from pingpull.config import Settings, build_settings


@dataclass
class LiveContent:
    base_url: str
    context: ContentContext
    kernel: compose.Kernel
    http: httpx.AsyncClient

    def client(self, token: str | None = None) -> ContentClient:
        return ContentClient(self.http, token)

    async def account(self, handle: str) -> tuple[ContentClient, dict[str, Any]]:
        created = await self.client().create_account(handle)
        return self.client(created["token"]), created


def test_settings(database_url: str, data_dir: Path, **content: Any) -> Settings:
    return build_settings(
        {
            "data_dir": str(data_dir),
            "database_url": database_url,
            "content": {"port": 0, "registration": "open", **content},
        }
    )


@asynccontextmanager
async def live_content(settings: Settings) -> AsyncIterator[LiveContent]:
    shutdown = trio.Event()
    async with compose.open_kernel(settings) as kernel, trio.open_nursery() as nursery:
        context = compose.content_context(kernel)
        binds = await nursery.start(run_content, context, shutdown)
        base_url = binds[0]
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
            try:
                yield LiveContent(base_url=base_url, context=context, kernel=kernel, http=http)
            finally:
                shutdown.set()
