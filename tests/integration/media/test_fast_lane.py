"""The media fast lane answers exactly as the Quart route does, byte for byte on the wire, and leaves
everything it cannot answer from memory to the route.

Each case is sent twice over a raw socket: first with the access cache emptied (the route answers and
remembers the reader), then again (the lane answers). The two answers must be the same bytes apart
from the Date header. The lane serves local disk only; on S3 it must never answer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from content_svc.media.blobs import LocalBlobStore
from content_svc.media.page_cache import residency
from tests.integration.media.conftest import build_media_server
from tests.support.live import LiveContent
from tests.support.raw_http import raw_exchange

pytestmark = pytest.mark.s3

BLOB = os.urandom(300_000)
ETAG = f'"{hashlib.sha256(BLOB).hexdigest()}"'


def fast_answers(server: LiveContent) -> float:
    return server.context.metrics.media_fast_answers._value.get()  # type: ignore[attr-defined]


def zero_copy_bytes(server: LiveContent) -> float:
    return server.context.metrics.media_zero_copy_bytes._value.get()  # type: ignore[attr-defined]


def forget_readers(server: LiveContent) -> None:
    media = server.context.media
    assert media is not None
    media.access_cache._entries.clear()  # type: ignore[attr-defined]


async def upload_as_ana(server: LiveContent) -> tuple[LiveContent, str, str]:
    """(server, ana's token, the id of BLOB uploaded by ana)."""
    _, created = await server.account("ana")
    token = created["token"]
    answer = await server.http.post(
        "/v1/media", content=BLOB, headers={"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
    )
    assert answer.status_code == 201, answer.text
    return server, token, answer.json()["media_id"]


@pytest.fixture
async def uploaded(media_live: LiveContent) -> tuple[LiveContent, str, str]:
    return await upload_as_ana(media_live)


@pytest.fixture
async def uploaded_in_small_chunks(
    database_url: str, tmp_path: Path, media_settings: dict[str, Any]
) -> AsyncIterator[tuple[LiveContent, str, str]]:
    """BLOB on a server that reads 64 KiB at a time: a whole download takes more than one read."""
    small_chunks = {**media_settings, "read_chunk_bytes": 64 * 1024}
    async with build_media_server(database_url, tmp_path, small_chunks) as server:
        yield await upload_as_ana(server)


def is_problem(fields: list[tuple[bytes, bytes]]) -> bool:
    return (b"content-type", b"application/problem+json") in [(k.lower(), v) for k, v in fields]


CASES = {
    "whole": ("GET", {}),
    "one range": ("GET", {"Range": "bytes=100-199"}),
    "suffix range": ("GET", {"Range": "bytes=-10"}),
    "open range": ("GET", {"Range": "bytes=299990-"}),
    "junk range: the whole": ("GET", {"Range": "bytes=9-5"}),
    "stale If-Range: the whole": ("GET", {"Range": "bytes=5-9", "If-Range": '"stale"'}),
    "matching If-Range": ("GET", {"Range": "bytes=5-9", "If-Range": ETAG}),
    "If-None-Match: 304": ("GET", {"If-None-Match": ETAG}),
    "HEAD": ("HEAD", {}),
    "HEAD of a range": ("HEAD", {"Range": "bytes=0-9"}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_lane_answers_the_same_bytes_as_the_route(
    uploaded: tuple[LiveContent, str, str], case: str
) -> None:
    server, token, media_id = uploaded
    method, extra = CASES[case]
    headers = [*bearer(token), *extra.items()]
    path = f"/v1/media/{media_id}"
    forget_readers(server)
    before = fast_answers(server)
    by_route = await raw_exchange(server, method, path, headers)
    assert fast_answers(server) == before, "the first request must be the route's (nothing remembered)"
    sent_before = zero_copy_bytes(server)
    again = await raw_exchange(server, method, path, headers)
    local = server.context.media is not None and server.context.media.settings.backend == "local"
    assert fast_answers(server) == before + (1 if local else 0)
    assert again == by_route
    status, fields, body = by_route
    # the object was just written, so the page cache holds it: the lane's bytes went with sendfile
    assert zero_copy_bytes(server) == sent_before + (len(body) if local else 0)
    assert status in (200, 206, 304)
    if status == 304:  # RFC 9110 §8.6 and §15.4.5: no Content-Length but the 200's, no representation type
        assert {name.lower() for name, _ in fields}.isdisjoint({b"content-length", b"content-type"})


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


LEFT_TO_THE_ROUTE: dict[str, tuple[list[tuple[str, str]], int]] = {
    "several ranges": ([("Range", "bytes=0-9, 20-29")], 206),
    "an unsatisfiable range": ([("Range", "bytes=300000-")], 416),
    "Range twice": ([("Range", "bytes=0-0"), ("Range", "bytes=1-1")], 206),  # the route reads the first
}


@pytest.mark.parametrize("case", list(LEFT_TO_THE_ROUTE))
async def test_what_the_lane_does_not_decide_goes_to_the_route(
    uploaded: tuple[LiveContent, str, str], case: str
) -> None:
    server, token, media_id = uploaded
    extra, status = LEFT_TO_THE_ROUTE[case]
    path = f"/v1/media/{media_id}"
    assert (await raw_exchange(server, "GET", path, bearer(token)))[0] == 200  # remembered now
    before = fast_answers(server)
    got = await raw_exchange(server, "GET", path, bearer(token) + extra)
    assert got[0] == status
    assert fast_answers(server) == before


async def test_tokens_and_readers_not_in_memory_go_to_the_route(
    uploaded: tuple[LiveContent, str, str],
) -> None:
    server, token, media_id = uploaded
    path = f"/v1/media/{media_id}"
    assert (await raw_exchange(server, "GET", path, bearer(token)))[0] == 200
    _, other = await server.account("bob")
    before = fast_answers(server)
    assert (await raw_exchange(server, "GET", path, bearer("not-a-token")))[0] == 401
    assert (await raw_exchange(server, "GET", path, []))[0] == 401
    assert (await raw_exchange(server, "GET", path, [("Authorization", f"Basic {token}")]))[0] == 401
    # bob's token is verified by the route on his first request; his access is never remembered
    for _ in range(2):
        assert (await raw_exchange(server, "GET", path, bearer(other["token"])))[0] == 404
    assert fast_answers(server) == before


async def test_a_read_that_fails_is_left_to_the_route_which_renders_the_error(
    uploaded: tuple[LiveContent, str, str],
) -> None:
    server, token, media_id = uploaded
    media = server.context.media
    assert media is not None
    path = f"/v1/media/{media_id}"
    assert (await raw_exchange(server, "GET", path, bearer(token)))[0] == 200
    await media.blobs.delete(media_id)
    before = fast_answers(server)
    status, head, _ = await raw_exchange(server, "GET", path, bearer(token))
    assert status == 503
    assert is_problem(head)
    assert fast_answers(server) == before
    assert (await server.http.get("/healthz")).status_code == 200


def evict_from_page_cache(server: LiveContent, media_id: str) -> None:
    media = server.context.media
    assert media is not None and isinstance(media.blobs, LocalBlobStore)
    fd = os.open(media.blobs.object_path(media_id), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the object was fsynced: its pages are clean
        assert not residency.all_cached(fd, 0, len(BLOB))
    finally:
        os.close(fd)


async def test_an_answer_larger_than_one_read_chunk_is_sent_from_the_page_cache_or_streamed_by_the_route(
    uploaded_in_small_chunks: tuple[LiveContent, str, str],
) -> None:
    server, token, media_id = uploaded_in_small_chunks
    media = server.context.media
    assert media is not None
    local = media.settings.backend == "local"
    path = f"/v1/media/{media_id}"
    assert (await raw_exchange(server, "GET", path, bearer(token)))[2] == BLOB  # remembered now
    if local:
        evict_from_page_cache(server, media_id)
    before, sent_before = fast_answers(server), zero_copy_bytes(server)
    assert (await raw_exchange(server, "GET", path, bearer(token)))[2] == BLOB  # read from disk by the route
    assert fast_answers(server) == before
    small = await raw_exchange(server, "GET", path, [*bearer(token), ("Range", "bytes=0-65535")])
    assert small[2] == BLOB[:65536]
    assert fast_answers(server) == before + (1 if local else 0)
    # The route's reads brought the object back into memory: now the lane sends it whole, with sendfile.
    assert (await raw_exchange(server, "GET", path, bearer(token)))[2] == BLOB
    assert fast_answers(server) == before + (2 if local else 0)
    assert zero_copy_bytes(server) == sent_before + (len(BLOB) + 65536 if local else 0)


async def test_with_sendfile_off_the_lane_reads_and_large_answers_go_to_the_route(
    database_url: str, tmp_path: Path, media_settings: dict[str, Any]
) -> None:
    settings = {**media_settings, "read_chunk_bytes": 64 * 1024, "sendfile": False}
    async with build_media_server(database_url, tmp_path, settings) as started:
        server, token, media_id = await upload_as_ana(started)
        path = f"/v1/media/{media_id}"
        assert (await raw_exchange(server, "GET", path, bearer(token)))[2] == BLOB  # remembered now
        before = fast_answers(server)
        assert (await raw_exchange(server, "GET", path, bearer(token)))[2] == BLOB
        small = await raw_exchange(server, "GET", path, [*bearer(token), ("Range", "bytes=0-99")])
        assert small[2] == BLOB[:100]
        local = media_settings.get("backend", "local") == "local"
        assert fast_answers(server) == before + (1 if local else 0)
        assert zero_copy_bytes(server) == 0


async def test_a_large_object_missing_from_storage_is_a_503_problem_not_a_cut_connection(
    uploaded_in_small_chunks: tuple[LiveContent, str, str],
) -> None:
    server, token, media_id = uploaded_in_small_chunks
    media = server.context.media
    assert media is not None
    await media.blobs.delete(media_id)
    status, head, body = await raw_exchange(server, "GET", f"/v1/media/{media_id}", bearer(token))
    assert status == 503
    assert is_problem(head)
    assert b"missing" in body
    assert (await server.http.get("/healthz")).status_code == 200
