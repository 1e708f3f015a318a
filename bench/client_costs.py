"""Benchmark: the CPU two client-side paths cost, each against the one it replaced, in the same run.

Run ``.venv/bin/python -m bench.client_costs`` (about 40 s; needs Redis on 127.0.0.1:6379 for the
second table). One after another, never concurrently, so each number is one call's full cost:

* **SDK request** (decision 0007): `ContentClient.pull(0)` against the real ``pingpull serve
  content`` (embedded SQLite), over httpx and over the SDK's `Http1Session`, alternating by round;
  client CPU from ``time.process_time`` (this process runs nothing else).
* **Redis publish** (docs/architecture.md, "The Redis bus"): one `RedisBus.publish` of two
  recipients (the EVALSHA of a send) on `RespCommands`, against the same script run by redis.asyncio
  behind the asyncio bridge (how the bus published before), and a bare bridge crossing (a coroutine
  that returns at once) for scale; CPU per thread from /proc/self/task.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from bench._gateway_support import (
    RESULTS_DIR,
    CliServer,
    command_line,
    machine_info,
    output_arg,
    write_report,
)
from pingpull.client.content import ContentClient, HttpClient
from pingpull.client.http1 import Http1Session

PACKAGES = ("trio", "httpx", "h11", "hiredis", "redis", "uvloop")


def thread_cpu_s() -> tuple[float, float]:
    """CPU seconds of this process's main thread and of all its other threads."""
    main = other = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == os.getpid():
            main += seconds
        else:
            other += seconds
    return main, other


async def sdk_requests(requests: int, rounds: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="pingpull-client-costs-") as tmp:
        server = CliServer(
            ["content", "--data-dir", str(Path(tmp) / "data"), "--content-port", "0"],
            env={"PINGPULL_CONTENT_REGISTRATION": "open"},
            log_path=Path(tmp) / "serve.log",
        )
        try:
            url = server.urls["content_url"].split(",")[0]
            results: dict[str, list[float]] = {"httpx": [], "Http1Session": []}
            async with httpx.AsyncClient(base_url=url) as hx, Http1Session(url) as h1:
                created = await ContentClient(hx).create_account("cc" + secrets.token_hex(4))
                clients: dict[str, HttpClient] = {"httpx": hx, "Http1Session": h1}
                for http in clients.values():  # warm both
                    for _ in range(100):
                        await ContentClient(http, created["token"]).pull(0)
                for _ in range(rounds):
                    for name, http in clients.items():
                        client = ContentClient(http, created["token"])
                        started = time.process_time()
                        for _ in range(requests):
                            await client.pull(0)
                        results[name].append((time.process_time() - started) / requests * 1e6)
        finally:
            server.close()
    base = min(results["httpx"])
    lines = [
        f"`ContentClient.pull(0)` (an empty inbox), {requests} sequential requests per round, {rounds} "
        "rounds alternating; client CPU per request:",
        "",
        "| client | µs CPU, best round | all rounds | vs httpx |",
        "|---|---:|---|---:|",
    ]
    for name, values in results.items():
        cells = " / ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {name} | {min(values):,.0f} | {cells} | {min(values) / base:.2f}× |")
    return lines


async def redis_publish(redis_url: str, calls: int, rounds: int) -> list[str]:
    from pingpull import wire
    from pingpull.aio import open_asyncio_bridge
    from pingpull.bus.base import Publication
    from pingpull.bus.redis import _PUBLISH_SCRIPT, open_redis_bus

    prefix = "ppbench" + secrets.token_hex(3)
    publications = [
        Publication(1, 5, wire.encode_new(5, 9), [11]),
        Publication(2, 6, wire.encode_new(6, 9), [12]),
    ]
    results: dict[str, list[tuple[float, float]]] = {}
    async with open_asyncio_bridge() as bridge, open_redis_bus(redis_url, prefix=prefix) as bus:
        client: Any = await bridge.run(_make_client, redis_url)
        script = client.register_script(_PUBLISH_SCRIPT.source)
        keys = [f"{prefix}:head:1", f"{prefix}:head:2"]
        argv = [
            60,
            5,
            publications[0].frame,
            1,
            f"{prefix}:d:11",
            6,
            publications[1].frame,
            1,
            f"{prefix}:d:12",
        ]

        async def noop() -> int:
            return 1

        ways: dict[str, Callable[[], Awaitable[Any]]] = {
            "RespCommands (trio thread)": lambda: bus.publish(publications),
            "redis.asyncio behind the bridge": lambda: bridge.run(script, keys, argv),
            "a bare bridge crossing (no Redis)": lambda: bridge.run(noop),
        }
        for way in ways.values():
            for _ in range(50):
                await way()
        for _ in range(rounds):
            for name, way in ways.items():
                main0, other0 = thread_cpu_s()
                for _ in range(calls):
                    await way()
                main1, other1 = thread_cpu_s()
                results.setdefault(name, []).append(
                    ((main1 - main0) / calls * 1e6, (other1 - other0) / calls * 1e6)
                )
        await bridge.run(client.aclose)
    lines = [
        f"One publish of a send to two recipients (the EVALSHA), {calls} sequential calls per round, "
        f"{rounds} rounds alternating; CPU per call by thread, best round by total:",
        "",
        "| way | trio thread µs | bridge thread µs | total µs |",
        "|---|---:|---:|---:|",
    ]
    for name, values in results.items():
        main, other = min(values, key=sum)
        lines.append(f"| {name} | {main:,.0f} | {other:,.0f} | {main + other:,.0f} |")
    return lines


async def _make_client(url: str) -> Any:
    from redis import asyncio as aioredis

    return aioredis.from_url(url)


async def main_async(args: argparse.Namespace) -> str:
    started = time.monotonic()
    sdk = await sdk_requests(args.requests, args.rounds)
    publish = await redis_publish(args.redis_url, args.calls, args.rounds)
    return "\n".join(
        [
            "# Client-side costs: the SDK's HTTP client and the bus's publish",
            "",
            f"`{command_line('bench.client_costs')}`; wall time {time.monotonic() - started:.0f} s. "
            "Sequential calls, so each number is one call's whole cost (under load, batching across "
            "the bridge makes a crossing cheaper per call).",
            "",
            *machine_info(PACKAGES),
            "",
            "## SDK request",
            "",
            *sdk,
            "",
            "## Redis publish",
            "",
            *publish,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client_costs", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=900, help="SDK requests per round (900)")
    parser.add_argument("--calls", type=int, default=2000, help="publishes per round (2000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--output", type=output_arg, default=RESULTS_DIR / "client_costs.md")
    args = parser.parse_args()
    write_report(trio.run(main_async, args), args.output)


if __name__ == "__main__":
    main()
