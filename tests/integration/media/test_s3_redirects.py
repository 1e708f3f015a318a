"""S3's default download mode: a 302 to a short-lived presigned URL, so S3 (or a CDN in front of it)
moves the bytes. moto_server checks neither signatures nor expiry, so the URL's SigV4 query signature
and its lifetime are verified here, independently of botocore."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from tests.integration.media.conftest import build_media_server
from tests.integration.media.test_media_api import account, auth, upload
from tests.support.live import LiveContent
from tests.support.s3_server import MotoServer

pytestmark = pytest.mark.s3

BLOB = os.urandom(100_000)
SECRET = "testing"  # tests/support/s3_server.py's credentials


@pytest.fixture
async def redirecting(
    moto: MotoServer, tmp_path: Path, sqlite_template: object
) -> AsyncIterator[LiveContent]:
    from tests.support.services import SqliteTemplate

    moto.require()
    assert isinstance(sqlite_template, SqliteTemplate)
    settings = moto.media_settings(moto.new_bucket(), s3_presign_ttl_s=120)
    async with build_media_server(sqlite_template.fresh_copy(tmp_path), tmp_path, settings) as server:
        yield server


def sigv4_query_signature(url: str, secret: str) -> str:
    """The signature a presigned GET must carry (AWS SigV4, query-string authentication)."""
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))
    canonical_request = "\n".join(
        [
            "GET",
            quote(parts.path, safe="/-_.~"),
            canonical_query,
            f"host:{parts.netloc}",
            "",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    query = dict(params)
    date, scope = query["X-Amz-Date"], query["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for piece in scope.split("/"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


async def test_downloads_redirect_to_a_presigned_url_that_expires(redirecting: LiveContent) -> None:
    token, _ = await account(redirecting, "ana")
    media_id = (await upload(redirecting, token, BLOB, "audio/ogg")).json()["media_id"]
    answer = await redirecting.http.get(f"/v1/media/{media_id}", headers=auth(token))
    assert answer.status_code == 302
    assert answer.headers["Cache-Control"] == "private, no-store"
    location = answer.headers["Location"]
    query = dict(parse_qsl(urlsplit(location).query))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "120"
    signed_at = time.mktime(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")) - time.timezone
    assert abs(signed_at - time.time()) < 60
    assert query["response-content-type"] == "audio/ogg"
    assert query["X-Amz-Signature"] == sigv4_query_signature(location, SECRET)
    assert media_id in urlsplit(location).path

    # The bucket answers the URL itself, ranges included, with the bytes that were uploaded.
    whole = await redirecting.http.get(location)
    assert whole.content == BLOB
    ranged = await redirecting.http.get(location, headers={"Range": "bytes=10-19"})
    assert (ranged.status_code, ranged.content) == (206, BLOB[10:20])


async def test_no_redirect_for_strangers_and_304_before_redirecting(redirecting: LiveContent) -> None:
    token, _ = await account(redirecting, "ana")
    stranger, _ = await account(redirecting, "eve")
    media_id = (await upload(redirecting, token, BLOB)).json()["media_id"]
    denied = await redirecting.http.get(f"/v1/media/{media_id}", headers=auth(stranger))
    assert denied.status_code == 404
    assert "Location" not in denied.headers
    etag = f'"{hashlib.sha256(BLOB).hexdigest()}"'
    cached = await redirecting.http.get(
        f"/v1/media/{media_id}", headers={**auth(token), "If-None-Match": etag}
    )
    assert cached.status_code == 304


def test_the_signature_check_catches_a_tampered_url() -> None:
    url = (
        "http://127.0.0.1:9/b/media/objects/x?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=testing%2F20261128%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261128T120000Z"
        "&X-Amz-Expires=120&X-Amz-SignedHeaders=host&X-Amz-Signature=00"
    )
    good = sigv4_query_signature(url, SECRET)
    assert good != sigv4_query_signature(url.replace("Expires=120", "Expires=99999"), SECRET)
    assert good != sigv4_query_signature(url, "other-secret")


async def test_the_sdk_follows_the_presigned_redirect(redirecting: LiveContent) -> None:
    client, _ = await redirecting.account("ana")
    media_id = (await client.upload_media(BLOB, "image/png"))["media_id"]
    assert await client.download_media(media_id) == BLOB
    assert await client.download_media(media_id, start=7, stop=70) == BLOB[7:70]
