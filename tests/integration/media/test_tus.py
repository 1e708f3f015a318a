"""tus 1.0 under /v1/uploads: the protocol by hand (every status), then a real tus client (tuspy) that is
interrupted half-way and resumes; on local disk and S3 (parts of 5 MiB spooled on disk, tails parked
in the bucket), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from content_svc.media.reaper import reap_expired_uploads
from tests.integration.media.conftest import build_media_server
from tests.integration.media.test_media_api import account, auth, download, stored_objects
from tests.support.live import LiveContent
from tests.support.s3_server import MotoServer

pytestmark = pytest.mark.s3

MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def create(
    server: LiveContent, token: str, length: int, *, filetype: str = "video/mp4", **headers: str
) -> httpx.Response:
    return await server.http.post(
        "/v1/uploads",
        headers={
            **auth(token),
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": metadata(filename="clip.mp4", filetype=filetype),
            **headers,
        },
    )


async def patch(
    server: LiveContent, token: str, url: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await server.http.patch(
        url, content=data, headers={**auth(token), **TUS, **OCTETS, "Upload-Offset": str(offset), **headers}
    )


async def head(server: LiveContent, token: str, url: str) -> httpx.Response:
    return await server.http.head(url, headers={**auth(token), **TUS})


async def test_discovery_lists_version_extensions_limit_and_checksums(media_live: LiveContent) -> None:
    response = await media_live.http.options("/v1/uploads")
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    extensions = set(response.headers["Tus-Extension"].split(","))
    assert {"creation", "creation-with-upload", "termination", "expiration", "checksum"} <= extensions
    assert int(response.headers["Tus-Max-Size"]) > 0
    assert "sha1" in response.headers["Tus-Checksum-Algorithm"].split(",")


async def test_create_patch_head_complete_and_the_upload_id_is_the_media_id(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    data = os.urandom(12 * MIB + 123)  # crosses S3 part boundaries and leaves a tail
    created = await create(media_live, token, len(data))
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    assert url.startswith("http") and "/v1/uploads/" in url
    assert created.headers["Tus-Resumable"] == "1.0.0"
    assert "GMT" in created.headers["Upload-Expires"]
    offset = 0
    for size in (3 * MIB, 1, 5 * MIB - 1, 4 * MIB + 123):
        answer = await patch(media_live, token, url, offset, data[offset : offset + size])
        assert answer.status_code == 204, answer.text
        offset += size
        assert answer.headers["Upload-Offset"] == str(offset)
        status = await head(media_live, token, url)
        assert status.headers["Upload-Offset"] == str(offset)
        assert status.headers["Upload-Length"] == str(len(data))
        assert status.headers["Cache-Control"] == "no-store"
    media_id = url.rsplit("/", 1)[1]
    got = await download(media_live, token, media_id)
    assert got.status_code == 200
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
    assert got.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"' or got.headers.get("ETag")
    objects = stored_objects(media_live)
    assert not any(o.startswith("multipart:") or "/tail" in o for o in objects), objects


async def test_creation_with_upload_takes_the_first_chunk(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    created = await media_live.http.post(
        "/v1/uploads",
        content=b"hello ",
        headers={
            **auth(token),
            **TUS,
            **OCTETS,
            "Upload-Length": "11",
            "Upload-Metadata": metadata(filetype="text/plain"),
        },
    )
    assert created.status_code == 201
    assert created.headers["Upload-Offset"] == "6"
    done = await patch(media_live, token, created.headers["Location"], 6, b"world")
    assert done.headers["Upload-Offset"] == "11"
    got = await download(media_live, token, created.headers["Location"].rsplit("/", 1)[1])
    assert got.content == b"hello world"
    assert got.headers["Content-Type"].startswith("text/plain")


async def test_a_zero_length_upload_is_complete_at_creation(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    created = await create(media_live, token, 0)
    assert created.status_code == 201
    assert created.headers["Upload-Offset"] == "0"
    assert (await download(media_live, token, created.headers["Location"].rsplit("/", 1)[1])).content == b""


async def test_protocol_errors_get_their_status_and_change_nothing(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    url = (await create(media_live, token, 100)).headers["Location"]
    assert (await patch(media_live, token, url, 0, b"a" * 10)).status_code == 204

    wrong_offset = await patch(media_live, token, url, 5, b"b" * 10)
    assert wrong_offset.status_code == 409
    no_version = await media_live.http.patch(
        url, content=b"x", headers={**auth(token), **OCTETS, "Upload-Offset": "10"}
    )
    assert no_version.status_code == 412
    assert no_version.headers["Tus-Version"] == "1.0.0"
    other_version = await patch(media_live, token, url, 10, b"x", **{"Tus-Resumable": "0.2.2"})
    assert other_version.status_code == 412
    wrong_type = await patch(media_live, token, url, 10, b"x", **{"Content-Type": "application/json"})
    assert wrong_type.status_code == 415
    for junk in ("-1", "ten", "", "99999999999999999999"):
        assert (await patch(media_live, token, url, 10, b"x", **{"Upload-Offset": junk})).status_code == 400
    too_long = await patch(media_live, token, url, 10, b"c" * 91)
    assert too_long.status_code == 413
    assert (await head(media_live, token, url)).headers["Upload-Offset"] == "10"

    bad_checksum = await patch(
        media_live,
        token,
        url,
        10,
        b"d" * 10,
        **{"Upload-Checksum": "sha1 " + base64.b64encode(b"\0" * 20).decode()},
    )
    assert bad_checksum.status_code == 460
    assert (await head(media_live, token, url)).headers["Upload-Offset"] == "10"
    unknown_algorithm = await patch(media_live, token, url, 10, b"d", **{"Upload-Checksum": "crc32 AAAA"})
    assert unknown_algorithm.status_code == 400
    good = base64.b64encode(hashlib.sha256(b"e" * 10).digest()).decode()
    checked = await patch(media_live, token, url, 10, b"e" * 10, **{"Upload-Checksum": f"sha256 {good}"})
    assert checked.status_code == 204
    assert checked.headers["Upload-Offset"] == "20"


async def test_creation_is_validated(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    no_length = await media_live.http.post("/v1/uploads", headers={**auth(token), **TUS})
    assert no_length.status_code == 400
    deferred = await media_live.http.post(
        "/v1/uploads", headers={**auth(token), **TUS, "Upload-Defer-Length": "1"}
    )
    assert deferred.status_code == 400
    assert (await create(media_live, token, -5)).status_code == 400
    assert (await create(media_live, token, 10**15)).status_code == 413
    assert (await create(media_live, token, 10, filetype="text/html")).status_code == 415
    bad_metadata = await create(media_live, token, 10, **{"Upload-Metadata": "filename not-base64!"})
    assert bad_metadata.status_code == 400
    assert (
        await media_live.http.post("/v1/uploads", headers={**TUS, "Upload-Length": "5"})
    ).status_code == 401


async def test_uploads_are_private_to_their_owner(media_live: LiveContent) -> None:
    ana, _ = await account(media_live, "ana")
    bob, _ = await account(media_live, "bob")
    url = (await create(media_live, ana, 10)).headers["Location"]
    assert (await head(media_live, bob, url)).status_code == 404
    assert (await patch(media_live, bob, url, 0, b"x")).status_code == 404
    assert (await media_live.http.delete(url, headers={**auth(bob), **TUS})).status_code == 404
    assert (await head(media_live, ana, url)).status_code == 200


async def test_termination_removes_the_upload_and_its_bytes(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    url = (await create(media_live, token, 20 * MIB)).headers["Location"]
    assert (await patch(media_live, token, url, 0, os.urandom(6 * MIB))).status_code == 204
    assert stored_objects(media_live) != []
    gone = await media_live.http.delete(url, headers={**auth(token), **TUS})
    assert gone.status_code == 204
    assert (await head(media_live, token, url)).status_code == 404
    assert (await patch(media_live, token, url, 6 * MIB, b"x")).status_code == 404
    assert stored_objects(media_live) == []


async def test_abandoned_uploads_expire_and_are_reaped(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    url = (await create(media_live, token, 20 * MIB)).headers["Location"]
    assert (await patch(media_live, token, url, 0, os.urandom(7 * MIB))).status_code == 204
    finished = (await create(media_live, token, 3)).headers["Location"]
    assert (await patch(media_live, token, finished, 0, b"abc")).status_code == 204
    context = media_live.context
    assert context.media is not None
    real_clock = context.clock_ms
    context.clock_ms = lambda: real_clock() + (context.media.settings.upload_expiry_s + 1) * 1000  # type: ignore[union-attr]
    assert (await head(media_live, token, url)).status_code == 404
    assert await reap_expired_uploads(context, context.media) == 2
    context.clock_ms = real_clock
    assert (await head(media_live, token, url)).status_code == 404
    remaining = stored_objects(media_live)
    assert not any(o.startswith("multipart:") or "/tail" in o or o.startswith("uploads/") for o in remaining)
    media_id = finished.rsplit("/", 1)[1]
    assert (await download(media_live, token, media_id)).content == b"abc"  # the finished one is media now


async def test_an_interrupted_patch_keeps_what_arrived(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    data = os.urandom(8 * MIB)
    url = (await create(media_live, token, len(data))).headers["Location"]
    host, port = media_live.base_url.removeprefix("http://").rsplit(":", 1)
    path = url.split(str(port), 1)[1]
    stream = await trio.open_tcp_stream(host, int(port))
    request = (
        f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    await stream.send_all(request.encode() + data[: 6 * MIB + 5])
    await trio.sleep(0.5)
    await stream.aclose()
    with trio.fail_after(10):
        while True:
            offset = int((await head(media_live, token, url)).headers["Upload-Offset"])
            if offset > 0:
                break
            await trio.sleep(0.05)
    assert 0 < offset <= 6 * MIB + 5
    assert (await patch(media_live, token, url, offset, data[offset:])).status_code == 204
    got = await download(media_live, token, url.rsplit("/", 1)[1])
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()


async def test_a_real_tus_client_is_interrupted_and_resumes(media_live: LiveContent) -> None:
    from tusclient import client as tus_client
    from tusclient.exceptions import TusCommunicationError, TusUploadFailed

    token, _ = await account(media_live, "ana")
    data = os.urandom(11 * MIB + 7)

    class FailingHalfway(io.BytesIO):
        """A phone losing its network: reading past 6 MiB fails in the middle of a chunk."""

        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 6 * MIB:
                raise OSError("network is unreachable")
            return super().read(size)

    def first_attempt() -> str:
        uploader = tus_client.TusClient(f"{media_live.base_url}/v1/uploads", headers=auth(token)).uploader(
            file_stream=FailingHalfway(data),
            chunk_size=2 * MIB,
            metadata={"filetype": "video/mp4"},
            retries=0,
        )
        with pytest.raises((OSError, TusCommunicationError, TusUploadFailed)):
            uploader.upload()
        assert uploader.url is not None
        return str(uploader.url)

    def resume(url: str) -> int:
        uploader = tus_client.TusClient(f"{media_live.base_url}/v1/uploads", headers=auth(token)).uploader(
            file_stream=io.BytesIO(data), chunk_size=2 * MIB, url=url
        )
        resumed_at = int(uploader.get_offset())
        uploader.upload()
        return resumed_at

    url = await trio.to_thread.run_sync(first_attempt)
    resumed_at = await trio.to_thread.run_sync(resume, url)
    assert 0 < resumed_at < len(data)
    got = await download(media_live, token, url.rsplit("/", 1)[1])
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()


async def test_two_patches_at_once_never_both_append(media_live: LiveContent) -> None:
    token, _ = await account(media_live, "ana")
    # Far more than the socket buffers hold: httpx writes the whole body before it reads the answer,
    # so each 409, sent while its body is still arriving, must still reach it (or close the
    # connection); the paced body once stopped reading without closing, and both sides hung.
    data = os.urandom(8 * MIB)
    url = (await create(media_live, token, len(data))).headers["Location"]
    statuses: list[int] = []

    async def attempt() -> None:
        statuses.append((await patch(media_live, token, url, 0, data)).status_code)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(attempt)
    assert statuses.count(204) == 1, statuses
    assert set(statuses) <= {204, 409}
    got = await download(media_live, token, url.rsplit("/", 1)[1])
    assert got.content == data


async def test_the_s3_part_size_setting_is_honoured(
    moto: MotoServer, tmp_path: Path, sqlite_template: Any
) -> None:
    moto.require()
    media_settings = moto.media_settings(moto.new_bucket(), s3_download_mode="proxy")
    async with build_media_server(
        sqlite_template.fresh_copy(tmp_path), tmp_path, {**media_settings, "s3_part_size_bytes": 6 * MIB}
    ) as server:
        token, _ = await account(server, "ana")
        data = os.urandom(13 * MIB)
        url = (await create(server, token, len(data))).headers["Location"]
        assert (await patch(server, token, url, 0, data[: 7 * MIB])).status_code == 204
        media = server.context.media
        assert media is not None
        client = media.blobs.client  # type: ignore[attr-defined]
        upload = client.list_multipart_uploads(Bucket=media.settings.s3_bucket)["Uploads"][0]
        parts = client.list_parts(
            Bucket=media.settings.s3_bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        assert [p["Size"] for p in parts["Parts"]] == [6 * MIB]
        tail = client.head_object(
            Bucket=media.settings.s3_bucket,
            Key=f"{media.settings.s3_prefix}uploads/{url.rsplit('/', 1)[1]}/tail",
        )
        assert tail["ContentLength"] == MIB
        assert (await patch(server, token, url, 7 * MIB, data[7 * MIB :])).status_code == 204
        got = await download(server, token, url.rsplit("/", 1)[1])
        assert got.content == data


@pytest.mark.parametrize("dies", ["before_publishing_the_object", "before_writing_the_media_row"])
async def test_an_upload_whose_last_request_died_is_finished_by_the_next_one(
    media_live: LiveContent, monkeypatch: pytest.MonkeyPatch, dies: str
) -> None:
    """The last byte was recorded, then the process died: the next HEAD (or PATCH) publishes it."""
    from content_svc.media.errors import StorageUnavailable
    from content_svc.routes import tus as tus_routes

    token, _ = await account(media_live, "ana")
    data = os.urandom(6 * MIB + 3)
    url = (await create(media_live, token, len(data))).headers["Location"]
    media = media_live.context.media
    assert media is not None
    real_resume, real_publish = media.blobs.resume_upload, tus_routes._publish

    async def resume_then_die(state: Any) -> Any:
        sink = await real_resume(state)

        async def die() -> None:
            raise StorageUnavailable("simulated crash")

        sink.complete = die  # type: ignore[method-assign]
        return sink

    async def die_before_the_row(*args: Any) -> None:
        raise StorageUnavailable("simulated crash")

    if dies == "before_publishing_the_object":
        monkeypatch.setattr(media.blobs, "resume_upload", resume_then_die)
    else:
        monkeypatch.setattr(tus_routes, "_publish", die_before_the_row)
    assert (await patch(media_live, token, url, 0, data)).status_code == 503
    media_id = url.rsplit("/", 1)[1]
    assert (await download(media_live, token, media_id)).status_code == 404  # no row yet
    monkeypatch.setattr(media.blobs, "resume_upload", real_resume)
    monkeypatch.setattr(tus_routes, "_publish", real_publish)

    status = await head(media_live, token, url)
    assert status.headers["Upload-Offset"] == str(len(data))
    got = await download(media_live, token, media_id)
    assert got.status_code == 200
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
    again = await patch(media_live, token, url, len(data), b"")
    assert again.status_code == 409  # complete now: nothing more to append
