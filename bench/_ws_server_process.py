"""The server process of the gateway benchmarks: ``python -m bench._ws_server_process --impl ...``.

A WebSocket server doing the benchmark's job (accept, send one 20-byte binary frame on connect,
answer pings, hold idle, broadcast on command). ``pingpull`` is the real gateway
(`signal_svc.gateway.Gateway` on `signal_svc.service.run_signal`, a `MemoryBus`); a ``publish``
command goes through the gateway's real path: bus callback -> hub -> pre-encoded frame ->
non-blocking socket send. The two baselines are the idiomatic servers of their libraries. Driven by
`HarnessServer` (bench/_gateway_support.py) with JSON lines on stdin/stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._gateway_support import (
    FRAME,
    ISSUER,
    KIND_HELLO,
    KIND_NEW,
    SERVER_IMPLS,
    WS_BINARY_20,
    Json,
    host_port,
)

# ==================================================================================================
# the server process


def _reply(message: Json) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class PublishClock:
    """Wall and CPU (user, system) time of a server's publishing loop."""

    def __init__(self) -> None:
        self.times0 = os.times()
        self.t0_ns = time.monotonic_ns()

    def result(self, frames: int) -> Json:
        t1_ns = time.monotonic_ns()
        times1 = os.times()
        user = times1.user - self.times0.user
        system = times1.system - self.times0.system
        return {
            "frames": frames,
            "t0_ns": self.t0_ns,
            "t1_ns": t1_ns,
            "cpu_s": user + system,
            "user_s": user,
            "sys_s": system,
        }


class _Heads:
    """The round counter: NEW heads continue across publish commands, so clients can check order."""

    def __init__(self) -> None:
        self.head = 0

    def take(self, rounds: int) -> range:
        first = self.head + 1
        self.head += rounds
        return range(first, first + rounds)


def _hello(interval_s: float) -> bytes:
    return FRAME.pack(1, KIND_HELLO, int(interval_s), 0, 0)


def _new(head: int, ref: int) -> bytes:
    return FRAME.pack(1, KIND_NEW, 0, head, ref)


async def _trio_commands(handle: Callable[[Json], Any]) -> None:
    """Read JSON lines from stdin in trio; `handle` returns an awaitable or None."""
    import inspect

    import trio

    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            message = json.loads(line)
            if message["cmd"] == "exit":
                return
            try:
                result = handle(message)
                if inspect.isawaitable(result):
                    result = await result
                _reply(result)
            except Exception as exc:
                _reply({"error": f"{type(exc).__name__}: {exc}"})


_TRACE_BASELINE: list[Any] = []


def _server_common(message: Json, connections: Callable[[], int]) -> Json | None:
    """Commands every server answers: count, gc, and (with --trace) tracemalloc snapshots."""
    import tracemalloc

    cmd = message["cmd"]
    if cmd == "count":
        return {"connections": connections()}
    if cmd == "gc":
        return {"collected": gc.collect()}
    if cmd == "trace_start":
        gc.collect()
        _TRACE_BASELINE[:] = [tracemalloc.take_snapshot()]
        return {"tracing": tracemalloc.is_tracing()}
    if cmd == "trace_top":
        # Python allocations alive now and not at trace_start, grouped by the allocating line.
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.compare_to(_TRACE_BASELINE[0], str(message.get("key", "lineno")))
        top = [
            {
                "where": " <- ".join(
                    f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}"
                    for frame in list(reversed(stat.traceback))[: int(message.get("frames", 4))]
                ),
                "size_diff": stat.size_diff,
                "count_diff": stat.count_diff,
            }
            for stat in stats[: int(message.get("limit", 30))]
        ]
        total = sum(stat.size_diff for stat in stats)
        return {"top": top, "total_diff": total, "connections": connections()}
    return None


async def _pingpull_server(args: argparse.Namespace) -> None:
    import trio

    from pingpull.bus import MemoryBus, Publication
    from pingpull.config import SignalSettings
    from pingpull.tokens import load_keys
    from signal_svc.gateway import Gateway
    from signal_svc.service import run_signal

    settings = SignalSettings(
        host="127.0.0.1",
        port=0,
        ping_interval_s=args.ping_interval,
        ping_timeout_s=min(10.0, args.ping_interval),
        max_connections=1_000_000,
        handshake_rate_per_s=1_000_000.0,
        handshake_burst=1_000_000,
        drain_window_s=0.0,
        drain_timeout_s=1.0,
    )
    bus = MemoryBus()
    verifier = load_keys(Path(args.keys_dir)).verifier(issuer=ISSUER, leeway_s=30)
    gateway = Gateway(settings=settings, bus=bus, verifier=verifier)
    heads = _Heads()

    async def publish(message: Json) -> Json:
        rounds, mode, batch = int(message["rounds"]), str(message["mode"]), int(message.get("batch", 1000))
        # The hub's order, the one the raw-send floor below walks too: which socket is written after
        # which decides how the client processes' wake-ups batch, and must not differ between the two.
        devices = list(dict.fromkeys((link.user_id, link.device_id) for link in gateway.hub.links()))
        plan: list[list[Publication]] = []
        for head in heads.take(0 if mode == "raw-send" else rounds):
            if mode == "per-user":
                # One publication per user, as the content service makes for a message to a group:
                # each carries its own frame (head, message id) for that user's device.
                plan.append([Publication(u, head, _new(head, d), (d,)) for u, d in devices])
            else:
                # One publication naming every device: one frame shared by all.
                plan.append([Publication(0, head, _new(head, 0), [d for _, d in devices])])
        if mode == "raw-send":
            # The floor, not a server: the same sockets, one pre-built 22-byte frame, a bare loop of
            # non-blocking send() calls. What is left above it is the gateway's own Python.
            socks = [link.sock for link in gateway.hub.links()]
            frames = [WS_BINARY_20 + _new(head, 0) for head in heads.take(rounds)]
            clock = PublishClock()
            sent = 0
            for frame in frames:
                for sock in socks:
                    sock.send(frame)
                    sent += 1
                await trio.lowlevel.checkpoint()
            return clock.result(sent)
        chunks = [pubs[i : i + batch] for pubs in plan for i in range(0, len(pubs), batch)]
        delivered0 = gateway.hub.frames_delivered
        clock = PublishClock()
        for chunk in chunks:
            await bus.publish(chunk)
            await trio.lowlevel.checkpoint()
        return clock.result(gateway.hub.frames_delivered - delivered0)

    async def steady(message: Json) -> Json:
        """Publish one NEW frame at a time at `rate`/s to random devices, as the content service does
        after each commit (`fanout.announce`: one `Publication` per recipient user); report when each
        `bus.publish` call started, so the client's arrival times give publish -> frame latency."""
        import random

        rate, count = float(message["rate"]), int(message["count"])
        first_ref = int(message.get("first_ref", 1))
        rng = random.Random(int(message.get("seed", 1)))
        devices = sorted({(link.user_id, link.device_id) for link in gateway.hub.links()})
        user_heads: dict[int, int] = {}
        records: list[tuple[int, int, int]] = []  # (ref, publish start ns, lag ns)
        start = trio.current_time() + 0.1
        for i in range(count):
            due = start + i / rate
            await trio.sleep_until(due)
            lag_ns = int((trio.current_time() - due) * 1e9)
            user_id, device_id = rng.choice(devices)
            head = user_heads[user_id] = user_heads.get(user_id, 0) + 1
            ref = first_ref + i
            publication = Publication(user_id, head, _new(head, ref), (device_id,))
            t_ns = time.monotonic_ns()
            await bus.publish([publication])
            records.append((ref, t_ns, lag_ns))
        return {"records": records}

    def handle(message: Json) -> Any:
        common = _server_common(message, lambda: len(gateway.hub))
        if common is not None:
            return common
        if message["cmd"] == "publish":
            return publish(message)
        if message["cmd"] == "steady":
            return steady(message)
        raise ValueError(f"unknown command {message['cmd']!r}")

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(run_signal, gateway, shutdown)
        _reply({"port": host_port(urls[0])[1], "pid": os.getpid()})
        await _trio_commands(handle)
        nursery.cancel_scope.cancel()


async def _trio_websocket_server(args: argparse.Namespace) -> None:
    import trio
    from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

    connections: set[WebSocketConnection] = set()
    hello = _hello(args.ping_interval)
    heads = _Heads()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        connections.add(ws)
        try:
            await ws.send_message(hello)
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass
        finally:
            connections.discard(ws)

    async def publish(message: Json) -> Json:
        rounds = int(message["rounds"])
        frames = 0
        clock = PublishClock()
        for head in heads.take(rounds):
            frame = _new(head, 0)
            for ws in list(connections):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send_message(frame)
                    frames += 1
        return clock.result(frames)

    def handle(message: Json) -> Any:
        common = _server_common(message, lambda: len(connections))
        if common is not None:
            return common
        if message["cmd"] == "publish":
            return publish(message)
        raise ValueError(f"unknown command {message['cmd']!r}")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        _reply({"port": server.port, "pid": os.getpid()})
        await _trio_commands(handle)
        nursery.cancel_scope.cancel()


async def _websockets_server(args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    connections: set[ServerConnection] = set()
    hello = _hello(args.ping_interval)
    heads = _Heads()

    async def handler(ws: ServerConnection) -> None:
        connections.add(ws)
        try:
            await ws.send(hello)
            await ws.wait_closed()
        finally:
            connections.discard(ws)

    async def publish(message: Json) -> Json:
        rounds = int(message["rounds"])
        frames = 0
        clock = PublishClock()
        for head in heads.take(rounds):
            targets = list(connections)
            broadcast(targets, _new(head, 0))
            frames += len(targets)
            await asyncio.sleep(0)
        return clock.result(frames)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        ping_interval=args.ping_interval,
        ping_timeout=min(10.0, args.ping_interval),
        backlog=4096,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _reply({"port": port, "pid": os.getpid()})
        while line := await reader.readline():
            message = json.loads(line)
            if message["cmd"] == "exit":
                break
            try:
                common = _server_common(message, lambda: len(connections))
                if common is not None:
                    _reply(common)
                elif message["cmd"] == "publish":
                    _reply(await publish(message))
                else:
                    raise ValueError(f"unknown command {message['cmd']!r}")
            except Exception as exc:
                _reply({"error": f"{type(exc).__name__}: {exc}"})
        server.close()


def server_main(args: argparse.Namespace) -> None:
    if args.trace:
        import tracemalloc

        tracemalloc.start(args.trace)
    if args.impl == "pingpull":
        import trio

        trio.run(_pingpull_server, args)
    elif args.impl == "trio-websocket":
        import trio

        trio.run(_trio_websocket_server, args)
    elif args.impl == "websockets":
        asyncio.run(_websockets_server(args))
    else:
        raise SystemExit(f"unknown --impl {args.impl}; choose from {', '.join(SERVER_IMPLS)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._ws_server_process")
    parser.add_argument("--impl", default="pingpull", choices=SERVER_IMPLS)
    parser.add_argument("--keys-dir", default="")
    parser.add_argument("--ping-interval", type=float, default=25.0)
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off)")
    server_main(parser.parse_args(argv))


if __name__ == "__main__":
    main()
