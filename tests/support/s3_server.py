"""A real S3 server for tests: `moto_server` as a child process on a free loopback port, spoken to over
HTTP by boto3 exactly as production speaks to S3. moto checks neither signatures nor presigned-URL
expiry, so tests of those look at the URLs our code produces instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.support.redis_server import free_port
from tests.support.services import unavailable

# moto accepts any credentials; boto3 refuses to sign without some.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


class MotoServer:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_path = log_dir / "moto_server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.failure: str | None = None
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
            "moto_server"
        )
        if binary is None:
            self.failure = "moto_server is not installed (pip install 'moto[server]')"
            return
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.failure = (
                    f"moto_server exited with {self.process.returncode}: {self.log_path.read_text()}"
                )
                return
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.failure = "moto_server did not answer within 30 s"

    def require(self) -> None:
        if self.failure is not None:
            unavailable("the S3 server (moto_server)", self.failure)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def client(self) -> Any:
        """One boto3 client per server (building a client loads botocore's models: slow)."""
        if self._client is None:
            import boto3

            self._client = boto3.session.Session(
                aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
            ).client("s3", endpoint_url=self.url)
        return self._client

    def new_bucket(self) -> str:
        name = f"pingpull-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def media_settings(self, bucket: str, **extra: Any) -> dict[str, Any]:
        return {
            "backend": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": self.url,
            "s3_region": REGION,
            **extra,
        }


def set_test_credentials() -> None:
    for name, value in TEST_CREDENTIALS.items():
        os.environ.setdefault(name, value)
