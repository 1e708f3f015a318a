"""Benchmark: idle memory per WebSocket connection, the pingpull gateway vs. two library servers.

Run ``.venv/bin/python -m bench.gateway_memory`` (``--help`` for the knobs). Every server does the
same job: accept a WebSocket, send one 20-byte binary frame on connect, answer pings, hold the
connection idle. Servers, each in its own process (bench/_ws_server_process.py):

* ``pingpull``: the gateway (`signal_svc.gateway.Gateway` + `run_signal`, in-memory bus), the same
  code `pingpull serve signal` runs, in a small harness process;
* ``pingpull-serve``: the real ``pingpull serve`` (embedded: content + signal, SQLite, in-memory bus),
  to check that the harness measures what a deployment holds;
* ``trio-websocket``: ``trio_websocket.serve_websocket``, handler looping on ``get_message()``;
* ``websockets``: ``websockets.asyncio.server.serve`` (asyncio), handler awaiting ``wait_closed()``.

Clients are `--clients` processes of raw non-blocking sockets with a hand-written handshake and one
epoll each, so they cost the server nothing beyond the connection itself. Per server: a warm-up of
`--warmup` connections (opened and closed, so lazy imports and first-use caches are not counted),
then RSS (VmRSS from /proc/<pid>/status) before, after N/2 and after N connections, each after
every connection has received its first frame and `--settle` seconds have passed. KiB per connection
is (RSS at N - RSS before) / N; the marginal figure (N/2 -> N) discounts one-off growth.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench._gateway_support import (
    RESULTS_DIR,
    ClientPool,
    CliServer,
    HarnessServer,
    command_line,
    host_port,
    machine_info,
    median,
    output_arg,
    ratio,
    rss_kib,
    write_report,
)
from pingpull.tokens import create_key

IMPLS: Final = ("pingpull", "pingpull-serve", "trio-websocket", "websockets")
LABELS: Final = {
    "pingpull": "pingpull gateway (harness: Gateway + run_signal, memory bus)",
    "pingpull-serve": "pingpull serve (embedded CLI: content + signal)",
    "trio-websocket": "trio-websocket serve_websocket",
    "websockets": "websockets asyncio serve",
}
PACKAGES: Final = ("trio", "trio-websocket", "wsproto", "h11", "websockets")
WARMUP_FIRST_ID: Final = 900_000_000


@dataclass
class Sample:
    impl: str
    rss_before_kib: int
    rss_half_kib: int
    rss_full_kib: int
    connections: int
    server_count: int
    lost: int
    pings: int
    connect_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def per_conn_kib(self) -> float:
        return (self.rss_full_kib - self.rss_before_kib) / self.connections

    @property
    def marginal_kib(self) -> float:
        half = self.connections // 2
        return (self.rss_full_kib - self.rss_half_kib) / (self.connections - half)


def _metrics_connections(signal_url: str) -> int:
    with urllib.request.urlopen(signal_url.rstrip("/") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^pingpull_signal_connections (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else -1


def measure(impl: str, args: argparse.Namespace, pool: ClientPool, workdir: Path) -> Sample:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{impl}-", dir=workdir))
    cli: CliServer | None = None
    harness: HarnessServer | None = None
    if impl == "pingpull-serve":
        cli = CliServer(
            ["--data-dir", str(data_dir), "--content-port", "0", "--signal-port", "0"],
            env={
                "PINGPULL_SIGNAL_MAX_CONNECTIONS": str(args.connections * 2),
                "PINGPULL_SIGNAL_HANDSHAKE_RATE_PER_S": "100000",
                "PINGPULL_SIGNAL_HANDSHAKE_BURST": "100000",
                "PINGPULL_SIGNAL_PING_INTERVAL_S": str(args.ping_interval),
            },
            log_path=data_dir / "serve.log",
        )
        host, port = host_port(cli.urls["signal_url"])
        pid = cli.pid
        keys_dir = data_dir / "keys"
    else:
        keys_dir = data_dir / "keys"
        create_key(keys_dir)
        harness = HarnessServer(impl, keys_dir=keys_dir, ping_interval_s=args.ping_interval, log_dir=workdir)
        host, port, pid = "127.0.0.1", harness.port, harness.pid
    try:
        n, half = args.connections, args.connections // 2

        def connect(first_id: int, count: int) -> float:
            result = pool.connect(
                host, port, first_id=first_id, count=count, keys_dir=keys_dir, concurrency=args.concurrency
            )
            if result.established != count:
                raise SystemExit(
                    f"{impl}: {result.established}/{count} connections established "
                    f"(failed {result.failed}, timed out {result.timed_out}): {result.errors}"
                )
            return result.elapsed_s

        if args.warmup:
            connect(WARMUP_FIRST_ID, args.warmup)
            pool.close_connections()
        time.sleep(args.settle)
        before = rss_kib(pid)
        connect_s = connect(1, half)
        time.sleep(args.settle)
        at_half = rss_kib(pid)
        connect_s += connect(1 + half, n - half)
        time.sleep(args.settle)
        at_full = rss_kib(pid)
        stats = pool.stats()
        if harness is not None:
            server_count = harness.connections()
        else:
            assert cli is not None
            server_count = _metrics_connections(cli.urls["signal_url"])
        sample = Sample(
            impl=impl,
            rss_before_kib=before,
            rss_half_kib=at_half,
            rss_full_kib=at_full,
            connections=n,
            server_count=server_count,
            lost=stats["lost"],
            pings=stats["pings"],
            connect_s=connect_s,
        )
        if stats["open"] != n:
            sample.notes.append(f"only {stats['open']} open at the end")
        print(
            f"{impl}: {sample.per_conn_kib:.2f} KiB/conn (marginal {sample.marginal_kib:.2f}), "
            f"server holds {server_count}, connect {connect_s:.1f} s",
            file=sys.stderr,
        )
        pool.close_connections()
        return sample
    finally:
        if harness is not None:
            harness.close()
        if cli is not None:
            cli.close()


@dataclass
class Trace:
    connections: int
    traced_bytes_per_conn: float
    top: list[dict[str, Any]]


def trace_pingpull(args: argparse.Namespace, pool: ClientPool, workdir: Path) -> Trace:
    """Where the gateway's per-connection bytes are allocated: tracemalloc, in a separate run (tracing
    itself costs memory, so its RSS is not comparable), grouped by the allocating stack."""
    keys_dir = workdir / "keys-trace"
    create_key(keys_dir)
    server = HarnessServer(
        "pingpull", keys_dir=keys_dir, ping_interval_s=args.ping_interval, log_dir=workdir, trace_frames=8
    )
    try:
        n = args.trace_connections
        pool.connect(
            "127.0.0.1", server.port, first_id=WARMUP_FIRST_ID, count=max(1, args.warmup), keys_dir=keys_dir
        )
        pool.close_connections()
        time.sleep(1.0)
        server.request({"cmd": "trace_start"})
        result = pool.connect("127.0.0.1", server.port, first_id=1, count=n, keys_dir=keys_dir)
        if result.established != n:
            raise SystemExit(f"trace: {result.established}/{n} connections established: {result.errors}")
        time.sleep(args.settle)
        answer = server.request(
            {"cmd": "trace_top", "key": "traceback", "limit": args.trace_top, "frames": 4}
        )
        pool.close_connections()
    finally:
        server.close()
    return Trace(n, float(answer["total_diff"]) / n, list(answer["top"]))


def render_trace(trace: Trace) -> list[str]:
    n = trace.connections
    lines = [
        "",
        f"## Where pingpull's bytes go (tracemalloc, {n:,} connections, separate run)",
        "",
        f"Python allocations alive after the connections and not before: "
        f"**{trace.traced_bytes_per_conn:,.0f} B/connection** in total (allocator overhead and "
        "fragmentation come on top in RSS). Largest allocation sites, innermost frame first:",
        "",
        "| B/conn | objects/conn | allocated at |",
        "|---:|---:|---|",
    ]
    for entry in trace.top:
        lines.append(
            f"| {entry['size_diff'] / n:,.0f} | {entry['count_diff'] / n:.1f} | `{entry['where']}` |"
        )
    return lines


def render(
    results: dict[str, list[Sample]], trace: Trace | None, args: argparse.Namespace, wall_s: float
) -> str:
    def med(impl: str, attr: str) -> float:
        return median([float(getattr(s, attr)) for s in results[impl]])

    base_ws = med("websockets", "per_conn_kib") if "websockets" in results else float("nan")
    base_tw = med("trio-websocket", "per_conn_kib") if "trio-websocket" in results else float("nan")
    goal = args.goal_kib
    lines = [
        "# Gateway idle memory per connection",
        "",
        f"`{command_line('bench.gateway_memory')}`",
        "",
        f"{args.connections:,} idle WebSocket connections per server, opened by {args.clients} client "
        f"processes (raw sockets, epoll); every connection got its 20-byte first frame; RSS read "
        f"{args.settle:g} s after the last one. Ping interval {args.ping_interval:g} s where the server "
        f"pings. Median over {args.repeats} repeat(s). KiB = 1024 bytes (VmRSS is in KiB). "
        f"Wall time {wall_s:.0f} s.",
        "",
        *machine_info(PACKAGES),
        "",
        "| server | held | RSS before MiB | RSS at N MiB | KiB/conn (0→N) | marginal KiB/conn (N/2→N) "
        "| vs websockets | vs trio-websocket |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for impl, samples in results.items():
        per = med(impl, "per_conn_kib")
        lines.append(
            f"| {LABELS[impl]} | {samples[-1].server_count:,} | {med(impl, 'rss_before_kib') / 1024:,.1f} "
            f"| {med(impl, 'rss_full_kib') / 1024:,.1f} | **{per:.2f}** | {med(impl, 'marginal_kib'):.2f} "
            f"| {ratio(per, base_ws)} | {ratio(per, base_tw)} |"
        )
    lines.append("")
    lines.append("Ratios are memory per connection against the baseline (below 1× = less memory).")
    for impl in ("pingpull", "pingpull-serve"):
        if impl in results:
            per = med(impl, "per_conn_kib")
            verdict = "met" if per <= goal else "NOT met"
            lines.append(f"Goal ≤ {goal:g} KiB/connection for {impl}: **{verdict}** ({per:.2f} KiB).")
    notes = [f"- {s.impl}: {note}" for samples in results.values() for s in samples for note in s.notes]
    lost = [f"{s.impl} lost {s.lost}" for samples in results.values() for s in samples if s.lost]
    if args.repeats > 1:
        lines += ["", "Per repeat (KiB/conn 0→N):", ""]
        for impl, samples in results.items():
            lines.append(f"- {impl}: " + " / ".join(f"{s.per_conn_kib:.2f}" for s in samples))
    if notes or lost:
        lines += ["", "Notes:", *notes, *(f"- {x}" for x in lost)]
    if trace is not None:
        lines += render_trace(trace)
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_memory", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--connections", type=int, default=10_000, help="connections per server (10000)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (4)")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight per client (64)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each RSS reading (5)")
    parser.add_argument("--warmup", type=int, default=20, help="connections opened and closed first (20)")
    parser.add_argument("--ping-interval", type=float, default=25.0, help="server ping interval, s (25)")
    parser.add_argument("--repeats", type=int, default=1, help="repeats per server; medians (1)")
    parser.add_argument("--goal-kib", type=float, default=8.0, help="goal for pingpull, KiB/conn (8)")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"subset of {','.join(IMPLS)}")
    parser.add_argument(
        "--trace-connections", type=int, default=2000, help="tracemalloc run for pingpull (2000; 0 skips)"
    )
    parser.add_argument("--trace-top", type=int, default=25, help="allocation sites listed (25)")
    parser.add_argument(
        "--output", type=output_arg, default=RESULTS_DIR / "gateway_memory.md", help="report ('' to skip)"
    )
    args = parser.parse_args(argv)
    args.impls = [i for i in args.impls.split(",") if i]
    if unknown := sorted(set(args.impls) - set(IMPLS)):
        parser.error(f"unknown impls {unknown}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    results: dict[str, list[Sample]] = {impl: [] for impl in args.impls}
    with tempfile.TemporaryDirectory(prefix="pingpull-gateway-memory-") as tmp:
        workdir = Path(tmp)
        pool = ClientPool(args.clients, log_dir=workdir)
        try:
            for _ in range(args.repeats):
                for impl in args.impls:
                    results[impl].append(measure(impl, args, pool, workdir))
            trace = trace_pingpull(args, pool, workdir) if args.trace_connections > 0 else None
        finally:
            with contextlib.suppress(Exception):
                pool.close()
    write_report(render(results, trace, args, time.monotonic() - started), args.output)


if __name__ == "__main__":
    main()
