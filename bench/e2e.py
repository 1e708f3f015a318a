"""`pingpull bench e2e`: messages per second end to end on PostgreSQL + Redis, against the database's limit.

End to end means send -> signal -> pull -> ack, the way apps do it: N senders (one HTTP client each,
one message in flight each, closed loop) post to their own k recipients, whose devices hold a
WebSocket signal through the client SDK (`DeviceSync`, in a child process) and pull and ack when it
fires. Throughput is the growth of the recipients' acknowledged cursors (the sum of
`device_cursors.acked_seq`, read from the database) over a steady window: a message counts once its
recipient's ack has committed.

The limit is measured in the same run, before and after, on the same database, by
`bench/e2e_database.py`: the same units of database work on native asyncio.

Where the time goes: CPU seconds per delivered message of every process involved (the server per
thread, the senders, the recipients, PostgreSQL, Redis) from /proc, and a py-spy profile of the
server taken after the measured window (`bench/e2e_profile.py`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from bench.e2e_database import (
    BODY,
    cpu_of,
    database_counters,
    pids_named,
    postgres_cpu_s,
    prepare_database,
    server_version,
)
from bench.e2e_profile import profile_server
from bench.protocols.common import (
    RESULTS_DIR,
    BenchError,
    Child,
    Json,
    PingpullServer,
    command_line,
    loadavg,
    machine_busy_s,
    machine_info,
    machine_interrupts_s,
    percentile,
    process_cpu_s,
    raise_fd_limit,
    run_cli,
    self_cpu_s,
    write_report,
)
from bench.protocols.devices import SHARED_TLS
from bench.protocols.scenario import Sent, verify
from pingpull.client.content import ContentClient
from pingpull.client.errors import ApiError, TransportError
from pingpull.client.http1 import Http1Session

DEFAULT_DATABASE_URL: Final = "postgresql+asyncpg://postgres@127.0.0.1:5432/pingpull_bench_e2e"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
LAYOUTS: Final = {
    "single": "one `pingpull serve` process (content + gateway + push)",
    "split": "two `pingpull serve content` processes (half the pool each) and one `pingpull serve signal`",
}
PACKAGES: Final = ("trio", "httpx", "hypercorn", "quart", "SQLAlchemy", "asyncpg", "redis", "uvloop")


@dataclass
class Options:
    senders: int = 16
    recipients_per_sender: int = 4
    duration_s: float = 20.0
    warmup_s: float = 3.0
    limit_s: float = 12.0
    profile_s: float = 8.0
    layouts: tuple[str, ...] = ("single", "split")
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    pool_size: int = 10
    work_dir: Path | None = None
    keep: bool = False


@dataclass(frozen=True)
class Party:
    user_id: int
    device_id: int
    token: str


@dataclass
class Cast:
    """Senders, each with k recipients of its own and a direct conversation with each."""

    senders: list[Party]
    recipients: list[list[Party]]
    conversations: list[list[int]]

    def as_json(self) -> Json:
        return {
            "senders": [p.__dict__ for p in self.senders],
            "recipients": [[p.__dict__ for p in row] for row in self.recipients],
            "conversations": self.conversations,
        }


# --- per-thread CPU, the content metrics, snapshots ---------------------------------------------------


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the main thread and of all other threads, from /proc/<pid>/task.

    Python 3.11 does not give its threads OS names, so the threads are told apart by id: the main
    thread runs trio (HTTP, routes, the gateway, the Redis bus); the others are the asyncio bridge's
    loop thread (asyncpg, SQLAlchemy) and, rarely, trio's worker threads."""
    out = {MAIN_THREAD: 0.0, OTHER_THREADS: 0.0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        group = MAIN_THREAD if int(tid) == pid else OTHER_THREADS
        out[group] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


SENDERS_ROW: Final = "senders (this process: the SDK's Http1Session under trio)"
RECIPIENTS_ROW: Final = "recipients (the SDK: trio-websocket + Http1Session)"
GATEWAY_ROW: Final = "  of which the gateway process (`serve signal`, both threads)"
MAIN_THREAD: Final = "main thread (trio: HTTP, routes, gateway, Redis)"
OTHER_THREADS: Final = "other threads (the asyncio bridge: SQLAlchemy, asyncpg)"


_METRIC_LINE: Final = re.compile(
    r"^pingpull_content_(requests_total|request_seconds_sum)\{(?P<labels>[^}]*)\} (?P<value>\S+)$"
)


async def content_metrics(urls: Sequence[str]) -> dict[str, float]:
    """Requests and handling seconds per "METHOD route", summed over the content processes, and the
    inbox pulls the fast lane answered ("lane GET /v1/inbox")."""
    out: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=10, verify=SHARED_TLS) as http:
        for url in urls:
            text = (await http.get(url + "/metrics")).text
            for line in text.splitlines():
                if line.startswith('pingpull_fast_lane_answers_total{route="/v1/inbox"} '):
                    out["lane GET /v1/inbox"] = out.get("lane GET /v1/inbox", 0.0) + float(line.split()[1])
                match = _METRIC_LINE.match(line)
                if not match:
                    continue
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels")))
                kind = "n" if match.group(1) == "requests_total" else "s"
                key = f"{kind} {labels.get('method')} {labels.get('route')}"
                out[key] = out.get(key, 0.0) + float(match.group("value"))
    return out


@dataclass
class CpuSnapshot:
    at: float
    servers: list[float]
    server_threads: dict[str, float]
    recipients: float
    senders: float
    postgres: float
    redis: float
    machine_busy: float
    machine_irq: float
    acked: int
    sessions: int
    requests: dict[str, float] = field(default_factory=dict)

    def minus(self, other: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(
            at=self.at - other.at,
            servers=[a - b for a, b in zip(self.servers, other.servers, strict=True)],
            server_threads={k: v - other.server_threads.get(k, 0.0) for k, v in self.server_threads.items()},
            recipients=self.recipients - other.recipients,
            senders=self.senders - other.senders,
            postgres=self.postgres - other.postgres,
            redis=self.redis - other.redis,
            machine_busy=self.machine_busy - other.machine_busy,
            machine_irq=self.machine_irq - other.machine_irq,
            acked=self.acked - other.acked,
            sessions=self.sessions - other.sessions,
            requests={k: v - other.requests.get(k, 0.0) for k, v in self.requests.items()},
        )


# --- servers -----------------------------------------------------------------------------------------


@dataclass
class Deployment:
    layout: str
    content: list[PingpullServer]
    gateway: PingpullServer

    @property
    def processes(self) -> list[PingpullServer]:
        return list(dict.fromkeys([*self.content, self.gateway]))

    def stop(self) -> None:
        for server in self.processes:
            server.stop()


async def deploy(layout: str, options: Options, work: Path, env: dict[str, str]) -> Deployment:
    common = ["--content-port", "0", "--signal-port", "0", "--database-url", options.database_url]
    if layout == "single":
        server = PingpullServer(
            ["serve", "--data-dir", str(work / "single"), *common], env, work / "serve.log"
        )
        await server.wait_ready()
        return Deployment(layout, [server], server)
    # The same connection budget as one process: each content process gets half the pool.
    split_env = {**env, "PINGPULL_DATABASE_POOL_SIZE": str(max(1, options.pool_size // 2))}
    contents = [
        PingpullServer(
            ["serve", "content", "--data-dir", str(work / f"content{i}"), *common],
            split_env,
            work / f"serve-content{i}.log",
        )
        for i in range(2)
    ]
    gateway = PingpullServer(
        ["serve", "signal", "--data-dir", str(work / "gateway"), *common], env, work / "serve-gateway.log"
    )
    for server in (*contents, gateway):
        await server.wait_ready()
    return Deployment(layout, contents, gateway)


async def seed(content_url: str, options: Options, prefix: str) -> Cast:
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=content_url, timeout=30, limits=limits, verify=SHARED_TLS) as http:
        anonymous = ContentClient(http)

        async def account(handle: str) -> Party:
            made = await anonymous.create_account(handle)
            return Party(made["user_id"], made["device_id"], made["token"])

        senders = [await account(f"{prefix}s{i}") for i in range(options.senders)]
        recipients = [
            [await account(f"{prefix}r{i}x{j}") for j in range(options.recipients_per_sender)]
            for i in range(options.senders)
        ]
        conversations = [
            [
                int((await anonymous.with_token(s.token).create_conversation([r.user_id]))["id"])
                for r in recipients[i]
            ]
            for i, s in enumerate(senders)
        ]
    return Cast(senders, recipients, conversations)


# --- the end-to-end run ------------------------------------------------------------------------------


@dataclass
class E2eResult:
    layout: str
    messages_per_s: float
    window: CpuSnapshot
    latencies_s: list[float]
    post_latencies_s: list[float]
    sent: int
    profile: list[str] = field(default_factory=list)


async def run_e2e(
    deployment: Deployment, cast_: Cast, options: Options, work: Path, progress: Any
) -> E2eResult:
    flat = [p for row in cast_.recipients for p in row]
    index_of = {p.device_id: i for i, p in enumerate(flat)}
    contents = [s.urls["content"] for s in deployment.content]
    worker = await Child.start("bench.protocols.devices", f"recipients-{deployment.layout}", work)
    try:
        reply = await worker.request(
            {
                "cmd": "start",
                "strategy": "ws",
                "devices": [
                    {
                        "token": p.token,
                        "content_url": contents[i % len(contents)],
                        "signal_url": deployment.gateway.urls["signal"],
                    }
                    for i, p in enumerate(flat)
                ],
                "interval_s": 5,
                "connect_spread_s": 0.5,
                "seed": 1,
                "timeout_s": 60,
                "content_http": "http1",
            },
            timeout_s=90,
        )
        if reply["connected"] < len(flat):
            raise BenchError(f"only {reply['connected']} of {len(flat)} recipients connected")
        stop = trio.Event()
        sent: list[Sent] = []
        k = options.recipients_per_sender

        async def sender(i: int) -> None:
            async with Http1Session(contents[i % len(contents)], timeout_s=30) as http:
                client = ContentClient(http, cast_.senders[i].token)
                n = 0
                while not stop.is_set():
                    j = n % k
                    started = time.monotonic()
                    try:
                        message = await client.send(
                            cast_.conversations[i][j], BODY, idempotency_key=f"e2e-{i}-{n}-{uuid.uuid4().hex}"
                        )
                    except (ApiError, TransportError) as exc:
                        raise BenchError(f"sender {i}: {exc}") from exc
                    recipient = index_of[cast_.recipients[i][j].device_id]
                    sent.append(Sent(len(sent), recipient, int(message["id"]), started, time.monotonic()))
                    n += 1

        device_ids = [p.device_id for p in flat]
        server_pids = [s.pid for s in deployment.processes]

        async def snapshot() -> CpuSnapshot:
            acked, sessions = await database_counters(options.database_url, device_ids)
            threads: dict[str, float] = {}
            for pid in server_pids:
                for name, seconds in thread_cpu(pid).items():
                    threads[name] = threads.get(name, 0.0) + seconds
            return CpuSnapshot(
                at=time.monotonic(),
                servers=[process_cpu_s(pid) for pid in server_pids],
                server_threads=dict(threads),
                recipients=process_cpu_s(worker.pid),
                senders=self_cpu_s(),
                postgres=postgres_cpu_s(),
                redis=cpu_of(pids_named("redis-server")),
                machine_busy=machine_busy_s(),
                machine_irq=machine_interrupts_s(),
                acked=acked,
                sessions=sessions,
                requests=await content_metrics(contents),
            )

        profile: list[str] = []
        async with trio.open_nursery() as nursery:
            for i in range(options.senders):
                nursery.start_soon(sender, i)
            await trio.sleep(options.warmup_s)
            first = await snapshot()
            deadline = trio.current_time() + options.duration_s
            while (now := trio.current_time()) < deadline:
                progress.bar(
                    f"[e2e {deployment.layout}]",
                    int(options.duration_s - (deadline - now)),
                    int(options.duration_s),
                    f"s, {len(sent):,} sent",
                )
                await trio.sleep(min(0.5, deadline - now))
            last = await snapshot()
            progress.done()
            if options.profile_s > 0:
                profile = await profile_server(deployment.content[0].pid, options.profile_s, work, progress)
            stop.set()
        progress.phase(f"[e2e {deployment.layout}] draining")
        total = len(sent)
        with trio.move_on_after(30):
            while (await worker.request({"cmd": "status"}))["received"] < total:  # noqa: ASYNC110
                await trio.sleep(0.1)
        result = await worker.request({"cmd": "stop"}, timeout_s=60)
    finally:
        await worker.close()
    receipts = [[(int(m), int(s), float(t)) for m, s, t in device] for device in result["received"]]
    verify(f"e2e {deployment.layout}", sent, receipts)
    committed = {s.message_id: s.committed_at for s in sent}
    window = last.minus(first)
    return E2eResult(
        layout=deployment.layout,
        messages_per_s=window.acked / window.at,
        window=window,
        latencies_s=sorted(t - committed[m] for device in receipts for m, _, t in device),
        post_latencies_s=sorted(s.committed_at - s.started_at for s in sent),
        sent=total,
        profile=profile,
    )


# --- the limit (bench/e2e_database.py runs it) --------------------------------------------------------


async def measure_limit(cast_: Cast, options: Options, work: Path, name: str, progress: Any) -> Json:
    progress.phase(
        f"[limit] the same units of work on native asyncio, {options.senders} workers, "
        f"{options.warmup_s:g} + {options.limit_s:g} s ({name})"
    )
    child = await Child.start("bench.e2e_database", f"limit-{name}", work)
    try:
        config = {
            "database_url": options.database_url,
            "pool_size": options.pool_size,
            "warmup_s": options.warmup_s,
            "duration_s": options.limit_s,
            **cast_.as_json(),
        }
        result = await child.request(config, timeout_s=options.warmup_s + options.limit_s + 60)
    finally:
        await child.close()
    return result


# --- the report --------------------------------------------------------------------------------------


def render(
    options: Options,
    limits: list[Json],
    results: list[E2eResult],
    wall_s: float,
    prog: str,
    argv: Sequence[str],
    server_version: str,
) -> str:
    limit = sum(float(x["messages_per_s"]) for x in limits) / len(limits)
    n, k = options.senders, options.recipients_per_sender
    lines = [
        "# End to end: send -> signal -> pull -> ack on PostgreSQL + Redis",
        "",
        f"`{prog}`: {n} senders (the SDK over one `Http1Session` connection each, one message in "
        f"flight each) to {k} recipients each ({n * k} recipient devices on WebSocket through the "
        "client SDK, content requests over `Http1Session`); a message counts when "
        "its recipient's ack has committed (growth of the recipients' `device_cursors.acked_seq`). "
        f"Warm-up {options.warmup_s:g} s, measured {options.duration_s:g} s. The limit is the same units "
        "of database work (send transaction, inbox pull, ack; pingpull's own functions and transaction "
        f"wrapper) driven by {n} workers on native asyncio (uvloop), {options.limit_s:g} s, measured "
        f"before and after on the same database. Wall time {wall_s:.0f} s.",
        "",
        *machine_info(
            PACKAGES,
            command_line(prog, argv),
            [
                f"- PostgreSQL {server_version} and Redis on the same machine (loopback); pool size "
                f"{options.pool_size} per process",
                f"- load average at the end (1 / 5 / 15 min): {loadavg()}",
            ],
        ),
        "",
        "| run | messages/s | vs the limit | latency p50 ms (201 -> in the app) | p99 | POST p50 ms "
        "| POST p99 | machine busy, cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, x in enumerate(limits):
        lines.append(
            f"| database limit, native asyncio ({'before' if i == 0 else 'after'}) "
            f"| {float(x['messages_per_s']):,.0f} | 1.00× | | | | | |"
        )
    for r in results:
        w = r.window
        lines.append(
            f"| pingpull, {LAYOUTS[r.layout]} | {r.messages_per_s:,.0f} | {r.messages_per_s / limit:.2f}× "
            f"| {percentile(r.latencies_s, 50) * 1000:.1f} | {percentile(r.latencies_s, 99) * 1000:.1f} "
            f"| {percentile(r.post_latencies_s, 50) * 1000:.1f} "
            f"| {percentile(r.post_latencies_s, 99) * 1000:.1f} | {w.machine_busy / w.at:.2f} |"
        )
    best = max(results, key=lambda r: r.messages_per_s) if results else None
    if best is not None:
        ratio = best.messages_per_s / limit
        verdict = "met" if ratio >= 0.5 else "NOT met"
        lines += [
            "",
            f"**Goal >= 0.5× of the database's limit: {verdict}** ({ratio:.2f}×, best layout: "
            f"{best.layout}; limit {limit:,.0f} messages/s, the mean of the two measurements).",
        ]
    lines += ["", "### Where the time goes", "", *where_the_time_goes(limits, results), ""]
    lines += requests_per_message(results)
    lines += [
        "",
        "PostgreSQL sessions opened during the measured window (a pool that opens and closes "
        "connections under load pays a backend fork and a connection handshake each time): "
        + ", ".join(
            f"limit ({'before' if i == 0 else 'after'}) {int(x['sessions']) / float(x['seconds']):.1f}/s"
            for i, x in enumerate(limits)
        )
        + ", "
        + ", ".join(f"pingpull {r.layout} {(r.window.sessions - 1) / r.window.at:.1f}/s" for r in results)
        + " (the bench's own counter queries included, one per snapshot).",
    ]
    for r in results:
        if r.profile:
            lines += ["", f"#### Profile of the server, {r.layout}", "", *r.profile]
    return "\n".join(lines) + "\n"


IRQ_ROW: Final = "kernel: interrupts and softirq (the loopback network stack)"
OTHER_ROW: Final = "everything else on the machine (other work)"


def where_the_time_goes(limits: list[Json], results: list[E2eResult]) -> list[str]:
    """CPU milliseconds per delivered message, per process (and server thread), from /proc."""
    columns = [f"limit ({'before' if i == 0 else 'after'})" for i in range(len(limits))]
    columns += [f"pingpull {r.layout}" for r in results]
    rows: dict[str, list[float | None]] = {}

    def put(row: str, col: int, seconds: float, messages: float) -> None:
        rows.setdefault(row, [None] * len(columns))[col] = seconds * 1000 / messages if messages else None

    for i, x in enumerate(limits):
        msgs, driver, pg, machine, irq = (
            float(x[k]) for k in ("messages", "cpu_s", "postgres_cpu_s", "machine_busy_s", "machine_irq_s")
        )
        put("the asyncio workers (SQLAlchemy + asyncpg on uvloop)", i, driver, msgs)
        put("PostgreSQL (all backends)", i, pg, msgs)
        put(IRQ_ROW, i, irq, msgs)
        put("whole machine", i, machine, msgs)
        put(OTHER_ROW, i, max(0.0, machine - driver - pg - irq), msgs)
    for j, r in enumerate(results):
        col, w = len(limits) + j, r.window
        msgs = float(w.acked)
        ours = sum(w.servers) + w.senders + w.recipients + w.postgres + w.redis + w.machine_irq
        for name, seconds in (
            ("pingpull server processes", sum(w.servers)),
            *((f"  of which {k}", v) for k, v in w.server_threads.items()),
            *(((GATEWAY_ROW, w.servers[-1]),) if r.layout == "split" else ()),
            (SENDERS_ROW, w.senders),
            (RECIPIENTS_ROW, w.recipients),
            ("PostgreSQL (all backends)", w.postgres),
            ("Redis", w.redis),
            (IRQ_ROW, w.machine_irq),
            ("whole machine", w.machine_busy),
            (OTHER_ROW, max(0.0, w.machine_busy - ours)),
        ):
            put(name, col, seconds, msgs)
    order = [
        "the asyncio workers (SQLAlchemy + asyncpg on uvloop)",
        "pingpull server processes",
        *(f"  of which {k}" for k in (MAIN_THREAD, OTHER_THREADS)),
        GATEWAY_ROW,
        SENDERS_ROW,
        RECIPIENTS_ROW,
        "PostgreSQL (all backends)",
        "Redis",
        IRQ_ROW,
        "whole machine",
        OTHER_ROW,
    ]
    lines = [
        "CPU milliseconds per delivered message, per process, from /proc (the machine's and the "
        "interrupts' lines from /proc/stat; *other work* is the machine minus everything listed):",
        "",
        "| process | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in order:
        if name in rows:
            cells = ["" if v is None else f"{v:.2f}" for v in rows[name]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def requests_per_message(results: list[E2eResult]) -> list[str]:
    """Content requests per delivered message and their mean handling time, from the servers' /metrics."""
    routes = (
        ("POST", "/v1/conversations/<id:conversation_id>/messages", "send"),
        ("GET", "/v1/inbox", "pull"),
        ("POST", "/v1/inbox/ack", "ack"),
    )
    lines = [
        "Content requests per delivered message and their mean handling time in the server (wall "
        "clock, from the servers' `/metrics`):",
        "",
        "| run | "
        + " | ".join(f"{name}/msg | {name} ms" for _, _, name in routes)
        + " | pulls by the fast lane |",
        "|---|" + "---:|---:|" * len(routes) + "---:|",
    ]
    for r in results:
        msgs = float(r.window.acked) or 1.0
        cells = []
        for method, route, _ in routes:
            n = r.window.requests.get(f"n {method} {route}", 0.0)
            seconds = r.window.requests.get(f"s {method} {route}", 0.0)
            cells += [f"{n / msgs:.2f}", f"{seconds * 1000 / n:.1f}" if n else "n/a"]
        pulls = r.window.requests.get("n GET /v1/inbox", 0.0)
        cells.append(f"{r.window.requests.get('lane GET /v1/inbox', 0.0) / pulls:.0%}" if pulls else "n/a")
        lines.append(f"| pingpull {r.layout} | " + " | ".join(cells) + " |")
    return lines


async def run_all(options: Options, progress: Any) -> tuple[list[Json], list[E2eResult], float, str]:
    raise_fd_limit()
    started = time.monotonic()
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="pingpull-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    keys = work / "keys"
    progress.phase(f"preparing {options.database_url} (dropped and migrated), keys in {keys}")
    await prepare_database(options.database_url)
    version = await server_version(options.database_url)
    await trio.to_thread.run_sync(lambda: run_cli("keys", "create", "--keys-dir", str(keys)))
    env = {
        "PINGPULL_REDIS_URL": options.redis_url,
        "PINGPULL_REDIS_PREFIX": f"benche2e{uuid.uuid4().hex[:8]}",
        "PINGPULL_TOKENS_KEYS_DIR": str(keys),
        "PINGPULL_CONTENT_REGISTRATION": "open",
        "PINGPULL_CONTENT_SEND_RATE_PER_S": "100000",
        "PINGPULL_CONTENT_SEND_BURST": "100000",
        "PINGPULL_DATABASE_POOL_SIZE": str(options.pool_size),
        "PINGPULL_SIGNAL_DRAIN_WINDOW_S": "0.5",
        "PINGPULL_SIGNAL_DRAIN_TIMEOUT_S": "5",
    }
    limits: list[Json] = []
    results: list[E2eResult] = []
    deployment: Deployment | None = None
    try:
        for index, layout in enumerate(options.layouts):
            progress.phase(f"starting {LAYOUTS[layout]}")
            deployment = await deploy(layout, options, work, env)
            progress.phase("seeding senders, recipients and conversations")
            content_url = deployment.content[0].urls["content"]
            e2e_cast = await seed(content_url, options, f"e{index}")  # fresh inboxes for every layout
            if index == 0:
                limit_cast = await seed(content_url, options, "l")
                limits.append(await measure_limit(limit_cast, options, work, "before", progress))
            progress.phase(f"[e2e {layout}] {options.senders} senders, warm-up {options.warmup_s:g} s")
            results.append(await run_e2e(deployment, e2e_cast, options, work, progress))
            deployment.stop()
            deployment = None
        limits.append(await measure_limit(limit_cast, options, work, "after", progress))
    except BaseException:
        progress.done()
        progress.phase(f"logs are in {work}")
        raise
    finally:
        if deployment is not None:
            deployment.stop()
    if not options.keep:
        shutil.rmtree(work, ignore_errors=True)
    return limits, results, time.monotonic() - started, version


def main(argv: Sequence[str] | None = None, prog: str = "pingpull bench e2e") -> int:
    from bench.protocols.run import Progress

    defaults = Options()
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--senders", "-N", type=int, default=defaults.senders, help="senders (16)")
    parser.add_argument(
        "--recipients-per-sender", type=int, default=defaults.recipients_per_sender, help="k (4)"
    )
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="measured s (20)")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s, help="warm-up s (3)")
    parser.add_argument("--limit-duration", type=float, default=defaults.limit_s, help="limit run s (12)")
    parser.add_argument("--profile", type=float, default=defaults.profile_s, help="py-spy s, 0: none (8)")
    parser.add_argument(
        "--layouts", default=",".join(defaults.layouts), help=f"subset of {','.join(LAYOUTS)}"
    )
    parser.add_argument("--database-url", default=defaults.database_url, help="scratch database, DROPPED")
    parser.add_argument("--redis-url", default=defaults.redis_url)
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size, help="per process (10)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "e2e.md"), help="report ('' for stdout only)")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    layouts = tuple(x.strip() for x in args.layouts.split(",") if x.strip())
    if not layouts or set(layouts) - set(LAYOUTS):
        parser.error(f"--layouts: a subset of {','.join(LAYOUTS)}")
    options = Options(
        senders=args.senders,
        recipients_per_sender=args.recipients_per_sender,
        duration_s=args.duration,
        warmup_s=args.warmup,
        limit_s=args.limit_duration,
        profile_s=args.profile,
        layouts=layouts,
        database_url=args.database_url,
        redis_url=args.redis_url,
        pool_size=args.pool_size,
        work_dir=args.work_dir,
        keep=args.keep,
    )
    progress = Progress(quiet=False)
    try:
        limits, results, wall_s, version = trio.run(run_all, options, progress)
    except BenchError as exc:
        print(f"\n{prog}: FAILED: {exc}", file=sys.stderr)
        return 1
    shown = list(argv if argv is not None else sys.argv[1:])
    text = render(options, limits, results, wall_s, prog, shown, version)
    write_report(text, Path(args.output) if args.output else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m bench.e2e"))
