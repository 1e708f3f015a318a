"""Benchmark: the gateway's Redis subscriber, redis.asyncio behind the bridge vs. RespSubscriber.

Run ``python -m bench.redis_subscriber`` (``--help`` for the knobs). One run, one Redis, the same
trio callback (what the gateway's hub would be handed), three implementations:

* ``aio``: ``redis.asyncio`` PubSub on the asyncio side of `pingpull.aio` (the default thread-loop
  bridge, uvloop). A pump task on that loop reads messages and hands them to trio in batches: a deque
  plus one ``TrioToken.run_sync_soon`` per batch (one is scheduled only when none is pending). This is
  the baseline every ratio is taken against.
* ``aio_each``: the same, but one ``run_sync_soon`` per message (a reference: what a naive bridge
  costs).
* ``resp``: `pingpull.bus.resp.RespSubscriber`: trio socket + hiredis, callbacks in the reader task.

Cells, per implementation and per round (the order of implementations rotates from round to round):

* ``subscribe``: cold start to "every channel confirmed by Redis" for ``--subscribe-channels``
  channels (connect, SUBSCRIBE, all confirmations read): what a gateway pays after a Redis failover.
* ``flood`` (live): ``--channels`` subscribed channels; a publisher *process* sends
  ``--flood-messages`` 20-byte frames round-robin over them with pipelined PUBLISH (``--pipeline``
  per write); rate = messages / (first PUBLISH written -> last callback). A subscriber that keeps up
  shows the publisher's (and Redis') rate here, so this is a floor for the fast ones.
* ``drain``: the same flood, published while the subscriber is held (the trio thread blocked on the
  publisher and, for the bridge variants, the asyncio loop parked on an event), so it piles up in
  Redis' output buffer and the socket; rate = messages / (release -> last callback): the
  subscriber's own ceiling. CPU time of the subscriber process (all threads) per message.
* ``steady``: the publisher sends one PUBLISH at a time at ``--rate`` msg/s for ``--steady-s``
  seconds; each frame carries ``time.monotonic_ns()`` taken just before the write (CLOCK_MONOTONIC
  is system-wide on Linux, so the two processes share it); latency = callback time - that.

The report gives the median over ``--rounds`` rounds and writes it to bench/results/redis_subscriber.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib.metadata
import json
import math
import os
import platform
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import hiredis
import redis
import redis.asyncio as aioredis
import trio
from redis.asyncio.client import PubSub

from bench._report import cpu_model
from pingpull.aio import AsyncioBridge, open_asyncio_bridge
from pingpull.bus.resp import RespSubscriber, encode_command

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_URL: Final = os.environ.get("PINGPULL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEFAULT_OUTPUT: Final = ROOT / "bench" / "results" / "redis_subscriber.md"

IMPLS: Final = ("aio", "aio_each", "resp")
BASELINE: Final = "aio"
IMPL_LABELS: Final = {
    "aio": "(a) redis.asyncio PubSub via bridge, batched run_sync_soon (baseline)",
    "aio_each": "(a') redis.asyncio PubSub via bridge, run_sync_soon per message",
    "resp": "(b) RespSubscriber (trio + hiredis)",
}
FRAME: Final = struct.Struct(">BBHQQ")  # pingpull.wire's layout: version, kind, arg, head, ref
CELL_TIMEOUT_S: Final = 60.0


# --------------------------------------------------------------------------------------------------
# the publisher process (blocking, raw socket, hiredis for the replies)


def _publisher_connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if parts.password is not None:
        auth = [parts.username.encode()] if parts.username else []
        sock.sendall(encode_command(b"AUTH", *auth, parts.password.encode()))
        _read_replies(sock, hiredis.Reader(), 1)
    return sock


def _read_replies(sock: socket.socket, reader: hiredis.Reader, count: int) -> int:
    """Read ``count`` integer replies; return their sum (receivers per PUBLISH)."""
    total = 0
    while count:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(1 << 16)
            if not data:
                raise SystemExit("publisher: Redis closed the connection")
            reader.feed(data)
            continue
        if isinstance(reply, hiredis.ReplyError):
            raise SystemExit(f"publisher: Redis error: {reply}")
        total += int(reply)
        count -= 1
    return total


def _channel_names(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


def _flood(sock: socket.socket, reader: hiredis.Reader, command: dict[str, Any]) -> dict[str, Any]:
    channels = _channel_names(command["prefix"], command["channels"])
    n, pipeline = int(command["messages"]), int(command["pipeline"])
    ts = time.monotonic_ns()
    commands = [
        encode_command(b"PUBLISH", channels[i % len(channels)], FRAME.pack(1, 1, 0, i, ts)) for i in range(n)
    ]
    chunks = [b"".join(commands[i : i + pipeline]) for i in range(0, n, pipeline)]
    sizes = [min(pipeline, n - i) for i in range(0, n, pipeline)]
    receivers = 0
    t0 = time.monotonic_ns()
    for chunk, size in zip(chunks, sizes, strict=True):
        sock.sendall(chunk)
        receivers += _read_replies(sock, reader, size)
    return {"t0_ns": t0, "t1_ns": time.monotonic_ns(), "receivers": receivers, "sent": n}


def _steady(sock: socket.socket, reader: hiredis.Reader, command: dict[str, Any]) -> dict[str, Any]:
    channels = _channel_names(command["prefix"], command["channels"])
    rate, duration_s = float(command["rate"]), float(command["duration_s"])
    n = int(rate * duration_s)
    receivers = 0
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = FRAME.pack(1, 1, 0, i, time.monotonic_ns())
        sock.sendall(encode_command(b"PUBLISH", channels[i % len(channels)], frame))
        receivers += _read_replies(sock, reader, 1)
    return {"sent": n, "receivers": receivers, "elapsed_s": time.monotonic() - start}


def run_publisher(url: str) -> None:
    sock = _publisher_connect(url)
    reader = hiredis.Reader()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "flood":
            result = _flood(sock, reader, command)
        elif command["op"] == "steady":
            result = _steady(sock, reader, command)
        else:
            break
        print(json.dumps(result), flush=True)
    sock.close()


class Publisher:
    """Parent-side handle on the publisher process."""

    def __init__(self, url: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.redis_subscriber", "--publisher", "--url", url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise SystemExit(f"publisher died (exit code {self._proc.wait()})")
        message: dict[str, Any] = json.loads(line)
        return message

    async def wait_ready(self) -> None:
        if not (await trio.to_thread.run_sync(self._read)).get("ready"):
            raise SystemExit("publisher did not start")

    def _write(self, command: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()

    async def command(self, **command: Any) -> dict[str, Any]:
        """Run a publisher command while the trio thread stays free to receive."""
        self._write(command)
        return await trio.to_thread.run_sync(self._read)

    def command_blocking(self, **command: Any) -> dict[str, Any]:
        """Run a publisher command with the calling (trio) thread blocked until it is done."""
        self._write(command)
        return self._read()

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# --------------------------------------------------------------------------------------------------
# the callback every implementation feeds (runs in the trio thread)


class Sink:
    """Counts messages; in latency mode also records callback time - the frame's publish time."""

    __slots__ = ("count", "done", "done_ns", "latencies_ns", "measure_latency", "target")

    def __init__(self) -> None:
        self.reset(0, measure_latency=False)

    def reset(self, target: int, *, measure_latency: bool) -> None:
        self.count = 0
        self.target = target
        self.measure_latency = measure_latency
        self.latencies_ns: list[int] = []
        self.done = trio.Event()
        self.done_ns = 0

    def __call__(self, _channel: bytes, data: bytes) -> None:
        if self.measure_latency:
            now = time.monotonic_ns()
            self.latencies_ns.append(now - int.from_bytes(data[12:20], "big"))
        self.count += 1
        if self.count == self.target:
            self.done_ns = time.monotonic_ns()
            self.done.set()


# --------------------------------------------------------------------------------------------------
# (a) redis.asyncio on the asyncio side of the bridge


class BatchedHandoff:
    """asyncio thread -> trio thread, one ``run_sync_soon`` per batch (scheduled only when none is
    pending; the trio side clears the flag before draining, so nothing is left behind)."""

    def __init__(self, token: trio.lowlevel.TrioToken, callback: Callable[[bytes, bytes], None]) -> None:
        self._token = token
        self._callback = callback
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._scheduled = False

    def put(self, channel: bytes, data: bytes) -> None:  # asyncio thread
        self._queue.append((channel, data))
        if not self._scheduled:
            self._scheduled = True
            self._token.run_sync_soon(self._flush)

    def _flush(self) -> None:  # trio thread
        self._scheduled = False
        pop, callback, queue = self._queue.popleft, self._callback, self._queue
        while queue:
            callback(*pop())


class EachHandoff:
    def __init__(self, token: trio.lowlevel.TrioToken, callback: Callable[[bytes, bytes], None]) -> None:
        self._token = token
        self._callback = callback

    def put(self, channel: bytes, data: bytes) -> None:  # asyncio thread
        self._token.run_sync_soon(self._callback, channel, data)


async def aio_open(url: str, channels: list[bytes]) -> tuple[aioredis.Redis, PubSub]:
    """Connect, SUBSCRIBE, and read every confirmation (asyncio side)."""
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(*channels)
    confirmed = 0
    while confirmed < len(channels):
        message = await pubsub.get_message(timeout=CELL_TIMEOUT_S)
        if message is None:
            raise RuntimeError("redis.asyncio: timed out waiting for subscribe confirmations")
        if message["type"] == "subscribe":
            confirmed += 1
    return client, pubsub


async def aio_pump(pubsub: PubSub, put: Callable[[bytes, bytes], None]) -> None:
    """Read messages forever and hand each to trio (asyncio side; cancelled through the bridge)."""
    get_message = pubsub.get_message
    while True:
        message = await get_message(ignore_subscribe_messages=True, timeout=None)
        if message is not None:
            put(message["channel"], message["data"])


async def aio_close(client: aioredis.Redis, pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis 8
    await client.aclose()


# --------------------------------------------------------------------------------------------------
# one implementation's subscriber, behind a common face


class Subscriber:
    """Open with channels (confirmed on return), pump into the sink, close."""

    def __init__(self, impl: str, url: str, bridge: AsyncioBridge, sink: Sink) -> None:
        self.impl, self.url, self.bridge, self.sink = impl, url, bridge, sink
        self._aio: tuple[aioredis.Redis, PubSub] | None = None
        self._scope: trio.CancelScope | None = None

    async def open(self, nursery: trio.Nursery, channels: list[bytes]) -> None:
        if self.impl == "resp":
            resp = RespSubscriber(self.url, self.sink)
            for channel in channels:
                resp.subscribe(channel)
            await nursery.start(self._run_resp, resp)
            return
        self._aio = await self.bridge.run(aio_open, self.url, channels)
        token = trio.lowlevel.current_trio_token()
        handoff = BatchedHandoff(token, self.sink) if self.impl == "aio" else EachHandoff(token, self.sink)
        await nursery.start(self._run_pump, self._aio[1], handoff.put)

    async def _run_resp(self, resp: RespSubscriber, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as self._scope:
            await resp.run(task_status=task_status)

    async def _run_pump(
        self, pubsub: PubSub, put: Callable[[bytes, bytes], None], *, task_status: trio.TaskStatus[None]
    ) -> None:
        with trio.CancelScope() as self._scope:
            task_status.started()
            await self.bridge.run(aio_pump, pubsub, put)

    def hold(self) -> threading.Event:
        """Stop the subscriber from reading until the returned event is set (the caller then blocks
        the trio thread). For ``resp`` blocking the trio thread is enough; for the bridge variants
        the asyncio loop, which reads the socket, is parked on the event too."""
        release = threading.Event()
        if self.impl != "resp":
            parked = threading.Event()

            def park() -> None:
                parked.set()
                release.wait()

            self.bridge.loop.call_soon_threadsafe(park)
            if not parked.wait(5.0):
                raise SystemExit("could not park the asyncio loop")
        return release

    async def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        if self._aio is not None:
            await self.bridge.run(aio_close, *self._aio)
            self._aio = None


# --------------------------------------------------------------------------------------------------
# cells


@dataclass
class Sample:
    subscribe_ms: float = math.nan
    flood_rate: float = math.nan  # live: publisher and subscriber running together
    publish_rate: float = math.nan  # what the publisher managed in that same flood
    drain_rate: float = math.nan  # backlog: the subscriber alone
    drain_cpu_us: float = math.nan
    steady_p50_us: float = math.nan
    steady_p99_us: float = math.nan
    steady_max_us: float = math.nan
    steady_cpu_us: float = math.nan
    latencies_ns: list[int] = field(default_factory=list, repr=False)  # sorted
    problems: list[str] = field(default_factory=list)


def _percentile(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return math.nan
    return float(sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))])


async def _wait_done(sink: Sink, what: str, problems: list[str]) -> bool:
    with trio.move_on_after(CELL_TIMEOUT_S):
        await sink.done.wait()
        return True
    problems.append(f"{what}: timed out with {sink.count:,}/{sink.target:,} messages")
    return False


def _check_receivers(what: str, sent: dict[str, Any], expected: int, problems: list[str]) -> None:
    if sent["receivers"] != expected:
        problems.append(f"{what}: Redis counted {sent['receivers']:,} receivers for {expected:,} publishes")


async def measure_impl(
    impl: str, args: argparse.Namespace, bridge: AsyncioBridge, publisher: Publisher
) -> Sample:
    sample, sink, run_id = Sample(), Sink(), uuid.uuid4().hex[:8]
    n = args.flood_messages

    # subscribe: cold start to every channel confirmed
    async with trio.open_nursery() as nursery:
        subscriber = Subscriber(impl, args.url, bridge, sink)
        started = time.perf_counter()
        await subscriber.open(nursery, _channel_names(f"pp:bench:{run_id}:s:", args.subscribe_channels))
        sample.subscribe_ms = (time.perf_counter() - started) * 1e3
        await subscriber.close()

    prefix = f"pp:bench:{run_id}:f:"
    flood = {"op": "flood", "prefix": prefix, "channels": args.channels, "messages": n}
    async with trio.open_nursery() as nursery:
        subscriber = Subscriber(impl, args.url, bridge, sink)
        await subscriber.open(nursery, _channel_names(prefix, args.channels))

        # live flood: rate from the first PUBLISH written to the last callback
        sink.reset(n, measure_latency=False)
        sent = await publisher.command(**flood, pipeline=args.pipeline)
        _check_receivers("flood", sent, n, sample.problems)
        sample.publish_rate = n / ((sent["t1_ns"] - sent["t0_ns"]) / 1e9)
        if await _wait_done(sink, "flood", sample.problems):
            sample.flood_rate = n / ((sink.done_ns - sent["t0_ns"]) / 1e9)

        # backlog drain: the subscriber is held while the flood piles up in Redis and the kernel
        sink.reset(n, measure_latency=False)
        release = subscriber.hold()
        try:
            sent = publisher.command_blocking(**flood, pipeline=args.pipeline)  # trio thread blocked too
        finally:
            released_ns = time.monotonic_ns()
            release.set()
        cpu0 = time.process_time()
        _check_receivers("drain", sent, n, sample.problems)
        if await _wait_done(sink, "drain", sample.problems):
            sample.drain_rate = n / ((sink.done_ns - released_ns) / 1e9)
            sample.drain_cpu_us = (time.process_time() - cpu0) / n * 1e6

        # steady: latency at a moderate rate
        expected = int(args.rate * args.steady_s)
        sink.reset(expected, measure_latency=True)
        cpu0 = time.process_time()
        sent = await publisher.command(
            op="steady", prefix=prefix, channels=args.channels, rate=args.rate, duration_s=args.steady_s
        )
        _check_receivers("steady", sent, expected, sample.problems)
        await _wait_done(sink, "steady", sample.problems)
        sample.steady_cpu_us = (time.process_time() - cpu0) / max(1, sink.count) * 1e6
        sample.latencies_ns = latencies = sorted(sink.latencies_ns)
        sample.steady_p50_us = _percentile(latencies, 0.50) / 1e3
        sample.steady_p99_us = _percentile(latencies, 0.99) / 1e3
        sample.steady_max_us = _percentile(latencies, 1.0) / 1e3

        await subscriber.close()
        nursery.cancel_scope.cancel()
    return sample


Results = dict[str, list[Sample]]


async def measure(args: argparse.Namespace) -> Results:
    results: Results = {impl: [] for impl in args.impls}
    publisher = Publisher(args.url)
    try:
        await publisher.wait_ready()
        async with open_asyncio_bridge() as bridge:
            if args.gc_freeze:
                # What a long-running gateway would do after start-up: the import-time heap (trio,
                # redis, hiredis, the bridge) leaves the collector's scans; GC still runs for
                # everything allocated from here on, for every implementation alike.
                gc.collect()
                gc.freeze()
            for round_no in range(args.rounds):
                shift = round_no % len(args.impls)
                order = args.impls[shift:] + args.impls[:shift]
                print(f"round {round_no + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
                for impl in order:
                    sample = await measure_impl(impl, args, bridge, publisher)
                    results[impl].append(sample)
                    summary = ", ".join(
                        f"{k}={v:,.1f}" for k, v in vars(sample).items() if isinstance(v, float)
                    )
                    print(f"  {impl}: {summary} {sample.problems or ''}", file=sys.stderr, flush=True)
    finally:
        publisher.close()
    return results


# --------------------------------------------------------------------------------------------------
# report


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        info = client.info("server")
        return str(info.get("redis_version", "unknown"))
    finally:
        client.close()


def machine_info(server_version: str) -> list[str]:
    cpu = cpu_model()
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("trio", "redis", "hiredis", "uvloop")
    )
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: nproc {len(os.sched_getaffinity(0))}, {cpu}, {platform.system()} {platform.release()}",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- libraries: {versions}; bridge: `pingpull.aio` default (thread loop on uvloop)",
        f"- redis: server {server_version}, same machine (loopback); the publisher is another process",
    ]


def _ratio(value: float, baseline: float) -> str:
    return "n/a" if not baseline or math.isnan(value) or math.isnan(baseline) else f"{value / baseline:.2f}×"


def _median(samples: Sequence[Sample], name: str) -> float:
    values = [v for v in (float(getattr(s, name)) for s in samples) if not math.isnan(v)]
    return float(statistics.median(values)) if values else math.nan


def render(results: Results, args: argparse.Namespace, server_version: str, wall_s: float, load: str) -> str:
    names = [name for name, value in vars(Sample()).items() if isinstance(value, float)]
    med = {impl: {name: _median(results[impl], name) for name in names} for impl in args.impls}
    for impl in args.impls:  # latency percentiles over every round's samples pooled
        pooled = sorted(lat for sample in results[impl] for lat in sample.latencies_ns)
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)):
            med[impl][f"pooled_{label}_us"] = _percentile(pooled, q) / 1e3
        med[impl]["pooled_n"] = float(len(pooled))
    base = med[BASELINE]
    command = shlex.join(["python", "-m", "bench.redis_subscriber", *sys.argv[1:]])
    gc_mode = "import-time heap frozen (gc.freeze)" if args.gc_freeze else "default"

    def row(impl: str, columns: Sequence[tuple[str, str, bool]]) -> str:
        cells = [IMPL_LABELS[impl]]
        for name, fmt, with_ratio in columns:
            cells.append(format(med[impl][name], fmt))
            if with_ratio:
                cells.append(_ratio(med[impl][name], base[name]))
        return "| " + " | ".join(cells) + " |"

    lines = [
        "# Redis subscriber benchmark (the gateway's subscriber role)",
        "",
        f"`{command}`: {args.rounds} rounds (implementation order rotates), wall time {wall_s:.0f} s. "
        f"GC: {gc_mode}.",
        "",
        f"- **live flood**: {args.flood_messages:,} 20-byte frames round-robin over {args.channels:,} "
        f"subscribed channels, pipelined PUBLISH ({args.pipeline} per write) from another process; "
        "msg/s = messages / (first PUBLISH written -> last callback in trio). When it equals the "
        "publisher's own rate (see the per-round table), the subscriber simply kept up: a floor.",
        "- **drain**: the same flood published while the subscriber is held (trio thread and, for (a), "
        "the asyncio loop blocked), so it piles up in Redis' output buffer and the socket; msg/s = "
        "messages / (release -> last callback): the subscriber's own ceiling. CPU = the subscriber "
        "process's CPU time (all threads) per message while draining.",
        f"- **steady**: {args.rate:,.0f} msg/s for {args.steady_s:g} s, one PUBLISH at a time; latency "
        "= the publisher's `time.monotonic_ns()` in the frame -> the callback in the trio thread "
        "(publisher syscall + Redis + delivery included). CPU per message at that rate (about one "
        "wake-up per message).",
        f"- **subscribe**: cold connect -> {args.subscribe_channels:,} channels all confirmed by Redis "
        "(redis-py sends one SUBSCRIBE with every channel; RespSubscriber 1,000 channels per write).",
        "",
        "Throughput and CPU: median over rounds. Latency: percentiles over all rounds' samples pooled. "
        "Ratios are against (a) in the same run: msg/s ×>1 is faster; µs, ms, CPU ×<1 are better. "
        "On a small shared VM, p99 and beyond mostly record scheduling stalls of a few ms that hit "
        "every implementation (see how p99 moves from round to round); p50/p90 and CPU separate them.",
        "",
        *machine_info(server_version),
        f"- load average (1 min) at start / end of the run: {load}",
        "",
        "| implementation | live flood msg/s | vs (a) | drain msg/s | vs (a) | drain CPU µs/msg | vs (a) "
        f"| subscribe {args.subscribe_channels:,} ms | vs (a) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    throughput = (
        ("flood_rate", ",.0f", True),
        ("drain_rate", ",.0f", True),
        ("drain_cpu_us", ".2f", True),
        ("subscribe_ms", ",.1f", True),
    )
    lines += [row(impl, throughput) for impl in args.impls]
    samples = int(base["pooled_n"])
    lines += [
        "",
        f"| implementation (steady, {samples:,} samples) | p50 µs | vs (a) | p90 µs | vs (a) "
        "| p99 µs | vs (a) | p99.9 µs | max µs | CPU µs/msg | vs (a) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    latency = (
        ("pooled_p50_us", ",.0f", True),
        ("pooled_p90_us", ",.0f", True),
        ("pooled_p99_us", ",.0f", True),
        ("pooled_p999_us", ",.0f", False),
        ("pooled_max_us", ",.0f", False),
        ("steady_cpu_us", ".1f", True),
    )
    lines += [row(impl, latency) for impl in args.impls]

    header = " / ".join(f"r{i + 1}" for i in range(args.rounds))
    lines += [
        "",
        f"Per round, to judge the noise ({header}):",
        "",
        "| implementation | live flood msg/s | publisher msg/s (same flood) | drain msg/s | steady p50 µs "
        "| steady p99 µs | subscribe ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for impl in args.impls:
        cols = [
            " / ".join(format(getattr(s, name), fmt) for s in results[impl])
            for name, fmt in (
                ("flood_rate", ",.0f"),
                ("publish_rate", ",.0f"),
                ("drain_rate", ",.0f"),
                ("steady_p50_us", ",.0f"),
                ("steady_p99_us", ",.0f"),
                ("subscribe_ms", ",.1f"),
            )
        ]
        lines.append(f"| {IMPL_LABELS[impl]} | " + " | ".join(cols) + " |")
    problems = [
        f"- {impl} round {i + 1}: {problem}"
        for impl in args.impls
        for i, sample in enumerate(results[impl])
        for problem in sample.problems
    ]
    if problems:
        lines += ["", "Problems (a cell that timed out is left out of the medians):", "", *problems]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.redis_subscriber", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Redis URL ({DEFAULT_URL})")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (default 5)")
    parser.add_argument("--channels", type=int, default=1000, help="subscribed channels (default 1000)")
    parser.add_argument(
        "--flood-messages",
        type=int,
        default=200_000,
        help="flood size (default 200000; the drain backlog, ~75 B a message, must stay under Redis' "
        "client-output-buffer-limit for pubsub, 32 MB by default)",
    )
    parser.add_argument("--pipeline", type=int, default=1000, help="PUBLISH per write in the flood (1000)")
    parser.add_argument("--rate", type=float, default=2000.0, help="steady rate, msg/s (default 2000)")
    parser.add_argument("--steady-s", type=float, default=3.0, help="steady duration, s (default 3)")
    parser.add_argument("--subscribe-channels", type=int, default=10_000, help="subscribe cell (10000)")
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help=f"comma-separated subset of {', '.join(IMPLS)} (all)"
    )
    parser.add_argument(
        "--no-gc-freeze", dest="gc_freeze", action="store_false", help="leave the import-time heap to the GC"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="report path ('' to skip)")
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.impls = args.impls.split(",")
    if unknown := sorted(set(args.impls) - set(IMPLS)):
        parser.error(f"unknown implementations {unknown}; choose from {', '.join(IMPLS)}")
    if BASELINE not in args.impls:
        parser.error(f"--impls must include the baseline {BASELINE!r}")
    if args.output is not None and str(args.output) in ("", "."):
        args.output = None
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.publisher:
        run_publisher(args.url)
        return
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    server_version = redis_version(args.url)
    results = trio.run(measure, args)
    load = f"{load_start:.2f} / {os.getloadavg()[0]:.2f} (nproc {len(os.sched_getaffinity(0))})"
    report = render(results, args, server_version, time.monotonic() - started, load)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report, encoding="utf-8")
        print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
