"""`pingpull chat`: two terminals talking through a real server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.process import pingpull_serve


def _chat(server_urls: dict[str, str], state: Path, handle: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pingpull.cli",
            "chat",
            "--as",
            handle,
            "--content-url",
            server_urls["content"],
            "--signal-url",
            server_urls["signal"],
            "--state-dir",
            str(state),
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(process: subprocess.Popen[str], needle: str, timeout_s: float = 20) -> str:
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen += line
        if needle in line:
            return seen
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"{needle!r} not seen; output so far:\n{seen}")


@pytest.mark.e2e
def test_two_chat_terminals(tmp_path: Path) -> None:
    with pingpull_serve(tmp_path / "data") as server:
        bob = _chat(server.urls, tmp_path / "state", "bob")
        alice = None
        try:
            _read_until(bob, "signed in as bob (user 1")
            alice = _chat(server.urls, tmp_path / "state", "alice", "--to", "1")
            _read_until(alice, "signed in as alice (user 2")
            assert alice.stdin is not None
            alice.stdin.write("hello from the terminal\n")
            alice.stdin.flush()
            line = _read_until(bob, "hello from the terminal")
            assert "user 2: hello from the terminal" in line
            _read_until(alice, "me: hello from the terminal")  # the sender's inbox has it too
        finally:
            for process in (bob, alice):
                if process is not None:
                    process.kill()
                    process.wait()
