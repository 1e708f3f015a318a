"""A 200 MiB upload streams through: the process's resident memory stays flat while it does.

The server runs in this process (tests/support/live.py) and the client streams from a generator, so
the RSS sampled during the upload is the server's buffering plus a constant. Without back-pressure
(Quart buffers bodies as they arrive) or with the body held whole, it would grow by up to 200 MiB.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest
import trio

from tests.integration.media.test_media_api import account, auth, download
from tests.support.live import LiveContent

pytestmark = pytest.mark.s3

MIB = 1024 * 1024
TOTAL = 200 * MIB
GROWTH_LIMIT = 48 * MIB


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_200_mib_upload_keeps_memory_flat(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    block = os.urandom(MIB)
    expected = hashlib.sha256()
    for i in range(TOTAL // MIB):
        expected.update(block[i % 7 :] + block[: i % 7])

    async def body() -> AsyncIterator[bytes]:
        for i in range(TOTAL // MIB):
            yield block[i % 7 :] + block[: i % 7]

    baseline = rss_bytes()
    peak = baseline
    done = trio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        created = await media_live.http.post(
            "/v1/media", content=body(), headers={**auth(token), "Content-Type": "video/mp4"}, timeout=300
        )
        done.set()
    assert created.status_code == 201, created.text
    assert created.json()["size"] == TOTAL
    assert created.json()["sha256"] == expected.hexdigest()
    assert peak - baseline < GROWTH_LIMIT, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"

    # The download streams too, and the bytes are the ones sent.
    got = hashlib.sha256()
    response = await download(media_live, token, created.json()["media_id"], Range="bytes=100000000-")
    got.update(response.content)
    assert response.status_code == 206
    assert len(response.content) == TOTAL - 100_000_000
