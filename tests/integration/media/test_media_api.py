"""POST /v1/media and GET /v1/media/{id}: streaming uploads, ranges compared byte for byte, validators,
access, limits; on local disk and on a real S3 server, each on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import email
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.integration.media.conftest import build_media_server
from tests.support.live import LiveContent

pytestmark = pytest.mark.s3

BLOB = os.urandom(300_000)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def account(server: LiveContent, handle: str) -> tuple[str, int]:
    _, created = await server.account(handle)
    return created["token"], created["user_id"]


async def upload(
    server: LiveContent, token: str, data: bytes = BLOB, content_type: str = "image/jpeg", **headers: str
) -> httpx.Response:
    return await server.http.post(
        "/v1/media", content=data, headers={**auth(token), "Content-Type": content_type, **headers}
    )


def stored_objects(server: LiveContent) -> list[str]:
    """Every object or upload the blob store holds, wherever it keeps them."""
    media = server.context.media
    assert media is not None
    if media.settings.backend == "local":
        root = Path(server.kernel.settings.media_dir)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    client = media.blobs.client  # type: ignore[attr-defined]
    listed = client.list_objects_v2(Bucket=media.settings.s3_bucket).get("Contents", [])
    multipart = client.list_multipart_uploads(Bucket=media.settings.s3_bucket).get("Uploads", [])
    return sorted([o["Key"] for o in listed] + [f"multipart:{u['Key']}" for u in multipart])


async def download(server: LiveContent, token: str, media_id: str, **headers: str) -> httpx.Response:
    return await server.http.get(f"/v1/media/{media_id}", headers={**auth(token), **headers})


# --- upload and plain download ------------------------------------------------------------------------


async def test_an_upload_answers_its_id_size_and_sha256_and_reads_back_identically(
    media_live: LiveContent,
) -> None:
    token, _ = await account(media_live, "ana")
    created = await upload(media_live, token)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["size"] == len(BLOB)
    assert body["sha256"] == hashlib.sha256(BLOB).hexdigest()
    assert body["content_type"] == "image/jpeg"
    assert len(body["media_id"]) >= 32 and created.headers["Location"] == f"/v1/media/{body['media_id']}"
    got = await download(media_live, token, body["media_id"])
    assert got.status_code == 200
    assert got.content == BLOB
    assert got.headers["Content-Type"] == "image/jpeg"


async def test_media_ids_are_random(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    ids = {(await upload(media_live, token, b"same")).json()["media_id"] for _ in range(3)}
    assert len(ids) == 3


async def test_an_empty_upload_is_media_of_size_zero(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    created = await upload(media_live, token, b"")
    assert created.status_code == 201
    assert created.json()["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_a_chunked_upload_without_content_length_streams_in(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(BLOB), 7_001):
            yield BLOB[start : start + 7_001]

    created = await media_live.http.post(
        "/v1/media", content=pieces(), headers={**auth(token), "Content-Type": "video/mp4"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["sha256"] == hashlib.sha256(BLOB).hexdigest()


# --- validators and caching headers -------------------------------------------------------------------


async def test_downloads_carry_a_strong_etag_and_immutable_private_caching(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    response = await media_live.http.get(f"/v1/media/{media_id}", headers=auth(token))
    assert response.headers["ETag"] == f'"{hashlib.sha256(BLOB).hexdigest()}"'
    assert response.status_code == 200
    assert response.headers["Cache-Control"].startswith("private, max-age=")
    assert "immutable" in response.headers["Cache-Control"]
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_if_none_match_answers_304_without_a_body(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    etag = f'"{hashlib.sha256(BLOB).hexdigest()}"'
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await media_live.http.get(
            f"/v1/media/{media_id}", headers={**auth(token), "If-None-Match": header}
        )
        assert response.status_code == 304, header
        assert response.content == b""
    changed = await media_live.http.get(
        f"/v1/media/{media_id}", headers={**auth(token), "If-None-Match": '"x"'}
    )
    assert changed.status_code == 200


async def test_head_answers_the_headers_without_the_bytes(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    response = await media_live.http.head(f"/v1/media/{media_id}", headers=auth(token))
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(BLOB))
    assert response.content == b""
    ranged = await media_live.http.head(
        f"/v1/media/{media_id}", headers={**auth(token), "Range": "bytes=0-9"}
    )
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == f"bytes 0-9/{len(BLOB)}"


# --- ranges, byte for byte ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=100-199", 100, 200),
        ("bytes=299990-", 299_990, 300_000),
        ("bytes=-10", 299_990, 300_000),
        ("bytes=299999-999999999", 299_999, 300_000),
        ("bytes=0-", 0, 300_000),
    ],
)
async def test_a_single_range_answers_206_with_exactly_those_bytes(
    media_live: LiveContent, header: str, start: int, stop: int
) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    got = await download(media_live, token, media_id, Range=header)
    assert got.status_code == 206, got.text
    assert got.content == BLOB[start:stop]
    assert got.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(BLOB)}"
    assert got.headers["Content-Length"] == str(stop - start)


async def test_several_ranges_answer_multipart_byteranges(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    got = await download(media_live, token, media_id, Range="bytes=0-9, 1000-1099, -5")
    assert got.status_code == 206
    content_type = got.headers["Content-Type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    assert int(got.headers["Content-Length"]) == len(got.content)
    message = email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + got.content)
    parts = message.get_payload()
    assert isinstance(parts, list)
    expected = [(0, 10), (1000, 1100), (299_995, 300_000)]
    assert len(parts) == len(expected)
    for part, (start, stop) in zip(parts, expected, strict=True):
        assert part["Content-Range"] == f"bytes {start}-{stop - 1}/{len(BLOB)}"
        assert part["Content-Type"] == "image/jpeg"
        assert part.get_payload(decode=True) == BLOB[start:stop]


@pytest.mark.parametrize("header", ["bytes=300000-", "bytes=999999-1000000", "bytes=-0"])
async def test_ranges_past_the_end_answer_416_with_the_length(media_live: LiveContent, header: str) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    got = await download(media_live, token, media_id, Range=header)
    assert got.status_code == 416
    assert got.headers["Content-Range"] == f"bytes */{len(BLOB)}"
    assert got.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "header", ["bytes=9-5", "bytes=abc", "bytes=--5", "pages=1-2", "bytes=1-2-3", "bytes="]
)
async def test_junk_or_reversed_ranges_are_ignored_and_the_whole_media_served(
    media_live: LiveContent, header: str
) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    got = await download(media_live, token, media_id, Range=header)
    assert got.status_code == 200
    assert got.content == BLOB


async def test_if_range_serves_the_range_only_while_the_etag_matches(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    etag = f'"{hashlib.sha256(BLOB).hexdigest()}"'
    same = await download(media_live, token, media_id, Range="bytes=5-9", **{"If-Range": etag})
    assert (same.status_code, same.content) == (206, BLOB[5:10])
    other = await download(media_live, token, media_id, Range="bytes=5-9", **{"If-Range": '"stale"'})
    assert (other.status_code, other.content) == (200, BLOB)
    weak = await download(media_live, token, media_id, Range="bytes=5-9", **{"If-Range": f"W/{etag}"})
    assert weak.status_code == 200  # If-Range uses the strong comparison


async def test_too_many_ranges_are_not_honoured(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    media_id = (await upload(media_live, token)).json()["media_id"]
    many = ", ".join(f"{i * 10}-{i * 10 + 1}" for i in range(200))
    got = await download(media_live, token, media_id, Range=f"bytes={many}")
    assert got.status_code in (200, 416)
    assert got.status_code != 206


# --- access ---------------------------------------------------------------------------------------------


async def test_only_the_uploader_and_members_of_conversations_it_was_sent_to_read_media(
    media_live: LiveContent,
) -> None:
    ana, _ = await account(media_live, "ana")
    bob, bob_id = await account(media_live, "bob")
    eve, _ = await account(media_live, "eve")
    media_id = (await upload(media_live, ana)).json()["media_id"]
    for stranger in (bob, eve):
        assert (await media_live.http.get(f"/v1/media/{media_id}", headers=auth(stranger))).status_code == 404
    conversation = await media_live.http.post(
        "/v1/conversations", json={"members": [bob_id]}, headers=auth(ana)
    )
    sent = await media_live.http.post(
        f"/v1/conversations/{conversation.json()['id']}/messages",
        json={"body": "look", "media": [media_id]},
        headers={**auth(ana), "Idempotency-Key": "m1"},
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["media"] == [media_id]
    assert (await download(media_live, bob, media_id)).content == BLOB
    assert (await media_live.http.get(f"/v1/media/{media_id}", headers=auth(eve))).status_code == 404
    assert (await media_live.http.get(f"/v1/media/{media_id}")).status_code == 401


async def test_a_message_may_not_carry_media_the_sender_does_not_own(media_live: LiveContent) -> None:
    ana, _ = await account(media_live, "ana")
    bob, bob_id = await account(media_live, "bob")
    ana_media = (await upload(media_live, ana)).json()["media_id"]
    conversation = await media_live.http.post(
        "/v1/conversations", json={"members": [bob_id]}, headers=auth(ana)
    )
    path = f"/v1/conversations/{conversation.json()['id']}/messages"
    for media_id in (ana_media, "A" * 32):
        refused = await media_live.http.post(
            path,
            json={"body": "mine now", "media": [media_id]},
            headers={**auth(bob), "Idempotency-Key": media_id},
        )
        assert refused.status_code == 422
        assert refused.json()["unknown_media_ids"] == [media_id]
    history = await media_live.http.get(path, headers=auth(ana))
    assert history.json()["items"] == []  # nothing stored half-way
    assert (await media_live.http.get(f"/v1/media/{ana_media}", headers=auth(bob))).status_code == 404


@pytest.mark.parametrize("media_id", ["short", "x" * 65, "has.dot.in.it.1234567890", "%00" * 10])
async def test_malformed_media_ids_are_404(media_live: LiveContent, media_id: str) -> None:
    token, _ = await account(media_live, "ana")
    response = await media_live.http.get(f"/v1/media/{media_id}", headers=auth(token))
    assert response.status_code == 404


# --- bad uploads: the right 4xx and nothing stored -------------------------------------------------------


async def test_a_digest_mismatch_is_refused_and_nothing_is_stored(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    right = base64.b64encode(hashlib.sha256(BLOB).digest()).decode()
    refused = await upload(media_live, token, **{"Content-Digest": f"sha-256=:{wrong}:"})
    assert refused.status_code == 400
    assert refused.json()["type"].endswith("/digest-mismatch")
    legacy = await upload(media_live, token, Digest=f"SHA-256={wrong}")
    assert legacy.status_code == 400
    assert stored_objects(media_live) == []
    accepted = await upload(media_live, token, **{"Content-Digest": f"sha-256=:{right}:"})
    assert accepted.status_code == 201
    junk = await upload(media_live, token, **{"Content-Digest": "sha-256=:not base64!:"})
    assert junk.status_code == 400


@pytest.mark.parametrize(
    "content_type", ["text/html", "application/x-msdownload", "image", "image/png/x", ""]
)
async def test_content_types_outside_the_allow_list_are_refused(
    media_live: LiveContent, content_type: str
) -> None:
    token, _ = await account(media_live, "ana")
    headers = {**auth(token)}
    if content_type:
        headers["Content-Type"] = content_type
    refused = await media_live.http.post("/v1/media", content=b"<script>", headers=headers)
    assert refused.status_code in (400, 415), refused.text
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert stored_objects(media_live) == []


async def test_uploads_over_the_size_limit_are_refused_whole(
    database_url: str, tmp_path: Path, media_settings: dict[str, Any]
) -> None:
    async with build_media_server(
        database_url, tmp_path, {**media_settings, "max_media_bytes": 100_000}
    ) as server:
        token, _ = await account(server, "ana")
        declared = await upload(server, token, BLOB)
        assert declared.status_code == 413

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(BLOB), 10_000):
                yield BLOB[start : start + 10_000]

        streamed = await server.http.post(
            "/v1/media", content=pieces(), headers={**auth(token), "Content-Type": "image/png"}
        )
        assert streamed.status_code == 413
        assert stored_objects(server) == []
        assert (await upload(server, token, BLOB[:100_000])).status_code == 201


async def test_a_truncated_upload_stores_nothing_and_the_service_keeps_serving(
    media_live: LiveContent,
) -> None:
    token, _ = await account(media_live, "ana")
    host, port = media_live.base_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"POST /v1/media HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"
    )
    await stream.send_all(head.encode() + BLOB[:200_000])
    await trio.sleep(0.3)
    await stream.aclose()
    with trio.fail_after(10):
        while True:  # the handler notices the disconnect and cleans up
            if (
                stored_objects(media_live) == []
                and (await upload(media_live, token, b"ok")).status_code == 201
            ):
                break
            await trio.sleep(0.05)
    leftovers = [o for o in stored_objects(media_live) if not o.endswith(tuple("0123456789")) or "tmp" in o]
    assert not any("tmp/" in o or o.startswith("multipart:") for o in leftovers)


async def test_an_upload_answered_early_never_leaves_a_writing_client_waiting(
    media_live: LiveContent,
) -> None:
    """httpx, curl and most mobile stacks write the whole body before they read the answer. An upload
    answered before its body is read (401 here; 409, 413, 429 alike) must reach such a client, or at
    worst close its connection; the paced body once stopped reading without closing, and both ends
    waited for ever."""
    body = bytes(16 * 1024 * 1024)  # far more than the socket buffers hold
    host, port = media_live.base_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"POST /v1/media HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    answer = b""
    with trio.fail_after(30):
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(head + body)
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    await stream.aclose()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 401"), answer[:200]

    with trio.fail_after(30):
        try:
            refused = await media_live.http.post(
                "/v1/media", content=body, headers={"Content-Type": "image/png"}
            )
        except httpx.TransportError:
            pass  # the connection closed under the body: the client is told, not left waiting
        else:
            assert refused.status_code == 401
        token, _ = await account(media_live, "ana")
        assert (await upload(media_live, token)).status_code == 201


async def test_upload_rate_and_byte_quota_per_user(
    database_url: str, tmp_path: Path, media_settings: dict[str, Any]
) -> None:
    limits = {
        **media_settings,
        "max_media_bytes": 400_000,
        "upload_quota_bytes": 700_000,
        "upload_quota_refill_bytes_per_s": 1.0,
        "upload_burst": 3,
        "upload_rate_per_s": 0.01,
    }
    async with build_media_server(database_url, tmp_path, limits) as server:
        ana, _ = await account(server, "ana")
        bob, _ = await account(server, "bob")
        assert (await upload(server, ana, BLOB)).status_code == 201
        assert (await upload(server, ana, BLOB)).status_code == 201
        over_quota = await upload(server, ana, BLOB)  # 900 kB > 700 kB
        assert over_quota.status_code == 429
        assert int(over_quota.headers["Retry-After"]) > 1000
        assert (await upload(server, bob, b"x")).status_code == 201  # per user
        assert (await upload(server, bob, b"x")).status_code == 201
        assert (await upload(server, bob, b"x")).status_code == 201
        assert (await upload(server, bob, b"x")).status_code == 429  # burst of 3 uploads


async def test_the_openapi_document_describes_the_media_routes(media_live: LiveContent) -> None:
    document = (await media_live.http.get("/v1/openapi.json")).json()
    assert "/v1/media" in document["paths"]
    assert "/v1/uploads" in document["paths"]


async def test_the_sdk_uploads_with_a_digest_and_downloads_ranges(media_live: LiveContent) -> None:
    client, _ = await media_live.account("ana")
    created = await client.upload_media(BLOB, "image/webp")
    assert created["sha256"] == hashlib.sha256(BLOB).hexdigest()
    assert await client.download_media(created["media_id"]) == BLOB
    assert await client.download_media(created["media_id"], start=5, stop=50) == BLOB[5:50]
    assert await client.download_media(created["media_id"], start=299_000) == BLOB[299_000:]

    async def stream() -> AsyncIterator[bytes]:
        yield BLOB[:1000]
        yield BLOB[1000:]

    wrong = hashlib.sha256(b"not it").digest()
    from pingpull.client.errors import ApiError

    with pytest.raises(ApiError) as refused:
        await client.upload_media(stream(), "image/webp", sha256=wrong)
    assert refused.value.status == 400
