"""The protocol lab stays runnable: the small scenario (D=20, M=50), every strategy, completeness only.

`pingpull bench protocols` exits non-zero when any device misses a message, gets one twice or gets one
addressed to someone else; the numbers it prints are not asserted (they depend on the machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from bench.protocols.common import BenchError
from bench.protocols.scenario import Sent, verify


@pytest.mark.e2e
async def test_every_strategy_delivers_every_message_exactly_once(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pingpull.cli",
        "bench",
        "protocols",
        *("--devices", "20", "--messages", "50", "--rate", "50", "--interval", "1"),
        *("--idle", "1", "--connect-spread", "0.2"),
        *("--output", str(tmp_path / "protocols.md"), "--no-charts", "--work-dir", str(tmp_path / "work")),
    ]
    with trio.fail_after(50):
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr[-3000:]
    report = (tmp_path / "protocols.md").read_text()
    for label in ("short polling", "long polling", "SSE", "WebSocket"):
        assert f"| {label} |" in report


def test_a_lost_or_duplicated_message_fails_loudly() -> None:
    sent = [Sent(0, 0, 101, 0.0, 0.0), Sent(1, 1, 102, 0.0, 0.0), Sent(2, 1, 103, 0.0, 0.0)]
    verify("ok", sent, [[(101, 1, 0.1)], [(102, 1, 0.1), (103, 2, 0.2)]])
    with pytest.raises(BenchError, match="missing \\[103\\]"):
        verify("lossy", sent, [[(101, 1, 0.1)], [(102, 1, 0.1)]])
    with pytest.raises(BenchError, match="duplicated \\[101\\]"):
        verify("twice", sent, [[(101, 1, 0.1), (101, 1, 0.2)], [(102, 1, 0.1), (103, 2, 0.2)]])
    with pytest.raises(BenchError, match="not addressed to it \\[102\\]"):
        verify("crossed", sent, [[(101, 1, 0.1), (102, 2, 0.1)], [(102, 1, 0.1), (103, 2, 0.2)]])
