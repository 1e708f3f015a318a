from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pingpull.tokens import ensure_keys
from tests.support.live import LiveContent, live_content, test_settings


@pytest.fixture
async def live(database_url: str, tmp_path: Path) -> AsyncIterator[LiveContent]:
    """The content service on each backend, serving real HTTP on a free loopback port."""
    ensure_keys(tmp_path / "keys")
    async with live_content(test_settings(database_url, tmp_path)) as server:
        yield server
