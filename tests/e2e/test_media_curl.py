"""Media through `pingpull serve` with curl: a raw upload, a resumable (tus) upload in chunks, ranged
downloads with `curl -r` and `--continue-at`, over HTTP/1.1 and h2c, against the embedded default."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.process import pingpull_serve

pytestmark = pytest.mark.e2e


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60, check=False)


def test_media_with_curl(tmp_path: Path) -> None:
    assert shutil.which("curl"), "this test needs curl"
    blob = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "photo.jpg"
    source.write_bytes(blob)
    with pingpull_serve(tmp_path / "data") as server:
        base = server.content_url
        token = httpx.post(f"{base}/v1/accounts", json={"handle": "ana"}).json()["token"]
        bearer = f"Authorization: Bearer {token}"

        posted = curl(
            "-X",
            "POST",
            "--data-binary",
            f"@{source}",
            "-H",
            bearer,
            "-H",
            "Content-Type: image/jpeg",
            f"{base}/v1/media",
        )
        media = json.loads(posted.stdout)
        assert media["size"] == len(blob)
        assert media["sha256"] == hashlib.sha256(blob).hexdigest()
        url = f"{base}/v1/media/{media['media_id']}"

        # A download cut short, then resumed with --continue-at: curl sends Range and glues the rest on.
        partial = tmp_path / "partial.jpg"
        partial.write_bytes(blob[:1_000_000])
        resumed = curl("-C", "-", "-o", str(partial), "-H", bearer, url)
        assert resumed.returncode == 0, resumed.stderr
        assert hashlib.sha256(partial.read_bytes()).hexdigest() == media["sha256"]

        for protocol in ("--http1.1", "--http2-prior-knowledge"):
            ranged = curl(protocol, "-r", "100-199", "-D", "-", "-o", str(tmp_path / "r"), "-H", bearer, url)
            head = ranged.stdout.decode()
            assert " 206" in head.splitlines()[0], head
            assert f"content-range: bytes 100-199/{len(blob)}" in head.lower()
            assert (tmp_path / "r").read_bytes() == blob[100:200]

        # tus by hand: create, two PATCHes, then the upload id is a media id.
        created = curl(
            "-X",
            "POST",
            "-D",
            "-",
            "-H",
            bearer,
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            f"Upload-Length: {len(blob)}",
            "-H",
            "Upload-Metadata: filetype aW1hZ2UvanBlZw==",
            f"{base}/v1/uploads",
        )
        location = next(
            line.split(":", 1)[1].strip()
            for line in created.stdout.decode().splitlines()
            if line.lower().startswith("location:")
        )
        for offset, piece in ((0, blob[:2_000_000]), (2_000_000, blob[2_000_000:])):
            chunk = tmp_path / "chunk"
            chunk.write_bytes(piece)
            patched = curl(
                "-X",
                "PATCH",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--data-binary",
                f"@{chunk}",
                "-H",
                bearer,
                "-H",
                "Tus-Resumable: 1.0.0",
                "-H",
                "Content-Type: application/offset+octet-stream",
                "-H",
                f"Upload-Offset: {offset}",
                location,
            )
            assert patched.stdout == b"204"
        media_url = f"{base}/v1/media/{location.rsplit('/', 1)[1]}"
        fetched = curl("-H", bearer, media_url)
        assert fetched.stdout == blob
    assert "status=500" not in server.log()
