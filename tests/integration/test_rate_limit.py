"""The per-user send rate: a burst is allowed, then 429 with Retry-After, and nothing is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pingpull.tokens import ensure_keys
from tests.support.live import LiveContent, live_content, settings_for_test
from tests.support.services import SqliteTemplate


@pytest.fixture
async def strict(tmp_path: Path, sqlite_template: SqliteTemplate) -> AsyncIterator[LiveContent]:
    ensure_keys(tmp_path / "keys")
    settings = settings_for_test(
        sqlite_template.fresh_copy(tmp_path), tmp_path, send_rate_per_s=0.5, send_burst=3
    )
    async with live_content(settings) as server:
        yield server


async def test_burst_then_429_with_retry_after_per_user(strict: LiveContent) -> None:
    alice, _ = await strict.account("alice")
    bob, b = await strict.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    path = f"/v1/conversations/{conversation['id']}/messages"
    statuses = []
    for i in range(5):
        response = await alice.http.post(
            path,
            json={"body": f"m{i}"},
            headers={"Authorization": f"Bearer {alice.token}", "Idempotency-Key": f"k{i}"},
        )
        statuses.append(response.status_code)
    assert statuses == [201, 201, 201, 429, 429]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/rate-limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert (await bob.pull(0))["head"] == 3  # nothing stored for the refused sends
    # Another user's bucket is untouched.
    reply = await bob.send(conversation["id"], "my own budget")
    assert reply["body"] == "my own budget"
    metrics = (await strict.http.get("/metrics")).text
    assert 'pingpull_rate_limited_total{limit="send"} 2.0' in metrics
