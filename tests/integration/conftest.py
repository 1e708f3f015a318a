from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pingpull.tokens import ensure_keys
from tests.support.live import LiveContent, live_content, settings_for_test


@pytest.fixture
async def live(database_url: str, tmp_path: Path) -> AsyncIterator[LiveContent]:
    """The content service on each backend, serving real HTTP on a free loopback port."""
    ensure_keys(tmp_path / "keys")
    async with live_content(settings_for_test(database_url, tmp_path)) as server:
        yield server


@pytest.fixture
async def stack(tmp_path: Path, sqlite_template: object) -> AsyncIterator[LiveContent]:
    """Content service and gateway on one in-memory bus, SQLite (the gateway never touches the DB)."""
    from tests.support.services import SqliteTemplate

    assert isinstance(sqlite_template, SqliteTemplate)
    ensure_keys(tmp_path / "keys")
    settings = settings_for_test(
        sqlite_template.fresh_copy(tmp_path),
        tmp_path,
        signal={
            "ping_interval_s": 1.0,
            # Generous for a loaded CI machine: a pong of this very process must come back in time.
            "ping_timeout_s": 1.5,
            "handshake_timeout_s": 1.0,
            "drain_window_s": 0.5,
        },
    )
    async with live_content(settings, with_gateway=True) as server:
        yield server
