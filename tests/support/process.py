"""`pingpull serve` as a real child process: what a user runs, exercised by end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_READY = re.compile(r"\bready\b(.*)")
_URL_FIELD = re.compile(r"(\w+)_url=(\S+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    urls: dict[str, str]
    log_path: Path

    @property
    def content_url(self) -> str:
        return self.urls["content"]

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def pingpull_serve(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 30.0
) -> Iterator[ServerProcess]:
    """Start `pingpull serve --content-port 0 ...`, wait for its ready line, stop it with SIGTERM."""
    log_path = data_dir / "serve.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith("PINGPULL_") or k.startswith("PINGPULL_TEST")
    }
    child_env.update(env or {})
    command = [
        sys.executable,
        "-m",
        "pingpull.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--content-port",
        "0",
        "--signal-port",
        "0",
        *args,
    ]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=child_env, text=True
        )
    try:
        urls = _wait_ready(process, log_path, timeout_s)
        yield ServerProcess(process=process, urls=urls, log_path=log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen[str], log_path: Path, timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text()
        match = _READY.search(text)
        if match:
            return {name: url.split(",")[0] for name, url in _URL_FIELD.findall(match.group(1))}
        if process.poll() is not None:
            raise RuntimeError(f"pingpull serve exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    raise RuntimeError(f"pingpull serve did not become ready in {timeout_s}s:\n{log_path.read_text()}")
