"""Where the server's time goes in `pingpull bench e2e`: py-spy on a server, summarised by layer
and by function (self time of the innermost frame that belongs to a known layer)."""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

import trio

_LAYERS: Final = (
    ("sqlalchemy/", "SQLAlchemy"),
    ("asyncpg/", "asyncpg"),
    ("hypercorn/", "hypercorn (HTTP server)"),
    ("h11/", "h11 / wsproto"),
    ("wsproto/", "h11 / wsproto"),
    ("h2/", "h2"),
    ("quart_schema/", "quart-schema + pydantic"),
    ("pydantic", "quart-schema + pydantic"),
    ("quart/", "Quart"),
    ("quart_trio/", "Quart"),
    ("werkzeug/", "Quart"),
    ("jwt/", "tokens (PyJWT, cryptography)"),
    ("cryptography/", "tokens (PyJWT, cryptography)"),
    ("pingpull/tokens", "tokens (PyJWT, cryptography)"),
    ("logging/", "logging"),
    ("pingpull/logs", "logging"),
    ("prometheus_client/", "metrics"),
    ("pingpull/aio", "asyncio bridge"),
    ("asyncio/", "asyncio / uvloop"),
    ("redis/", "Redis client"),
    ("pingpull/bus", "bus"),
    ("signal_svc/", "gateway"),
    ("content_svc/", "content routes and units of work"),
    ("trio/", "trio (scheduler, sockets)"),
    ("json/", "json"),
)


def layer_of(frame: str) -> str | None:
    path = frame.split("(", 1)[1] if "(" in frame else frame
    for needle, layer in _LAYERS:
        if needle in path:
            return layer
    return None


async def profile_server(pid: int, seconds: float, work: Path, progress: Any) -> list[str]:
    """py-spy on the server while the load goes on; a summary by layer and by function (self time)."""
    executable = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if executable is None:
        return ["py-spy is not installed (`pip install py-spy`): no profile."]
    progress.phase(f"[e2e] profiling the server with py-spy for {seconds:g} s (not in the measured window)")
    output = work / f"profile-{pid}.txt"
    result = await trio.run_process(
        [
            executable,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(output),
            "--threads",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0 or not output.exists():
        return [f"py-spy failed: {result.stderr.decode(errors='replace')[-300:]}"]
    return summarize_profile(output)


def summarize_profile(path: Path, top: int = 12) -> list[str]:
    by_layer: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0]
        total += n
        by_thread[
            "asyncio bridge thread"
            if "pingpull-asyncio" in thread
            else "trio thread"
            if "MainThread" in thread
            else "other"
        ] += n
        leaf = frames[-1] if len(frames) > 1 else "(no Python frame: native code) (-)"
        layer = next((lay for f in reversed(frames[1:]) if (lay := layer_of(f)) is not None), "other")
        by_layer[layer] += n
        by_function[leaf.split(" (")[0] + " (" + leaf.split("(", 1)[-1].split(":")[0] + ")"] += n
    if not total:
        return ["py-spy recorded no busy samples."]
    return [
        f"py-spy, {total:,} busy samples of the server (250 Hz, idle threads excluded); self time by the "
        "innermost frame that belongs to a known layer:",
        "",
        "| layer | share |",
        "|---|---:|",
        *[f"| {layer} | {n / total:.0%} |" for layer, n in by_layer.most_common()],
        "",
        "by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in by_thread.most_common()),
        "",
        "| top functions (self) | share |",
        "|---|---:|",
        *[f"| `{fn}` | {n / total:.1%} |" for fn, n in by_function.most_common(top)],
    ]
