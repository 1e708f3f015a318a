"""`pingpull bench e2e`: messages per second end to end on PostgreSQL + Redis, against the database's limit.

End to end means send -> signal -> pull -> ack, the way apps do it: N senders (one HTTP client each,
one message in flight each, closed loop) post to their own k recipients, whose devices hold a
WebSocket signal through the client SDK (`DeviceSync`, in a child process) and pull and ack when it
fires. Throughput is the growth of the recipients' acknowledged cursors (the sum of
`device_cursors.acked_seq`, read from the database) over a steady window: a message counts once its
recipient's ack has committed.

The limit is measured in the same run, before and after, on the same database: the same units of
database work (`content_svc.messaging.send_message`, `pull_inbox`, `ack`, inside pingpull's own
transaction wrapper `Database._in_transaction` and its engine settings) driven by N workers on native
asyncio (uvloop, asyncpg through SQLAlchemy, no trio, no bridge, no HTTP, no signal), each doing
send -> pull -> ack per message for its own k recipients.

Where the time goes: CPU seconds per delivered message of every process involved (the server per
thread, the senders, the recipients, PostgreSQL, Redis) from /proc, and a py-spy profile of the
server taken after the measured window, summarised by layer and by function.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import httpx
import trio

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
BODY: Final = "a chat message of an ordinary length, eighty characters or so, nothing more to it."


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


# --- the database's limit: native asyncio, the same units of work ------------------------------------


async def _limit_main(config: Json) -> Json:
    from content_svc import messaging
    from content_svc.context import wall_clock_ms
    from pingpull.db.engine import Database, create_engine

    engine = create_engine(config["database_url"], pool_size=int(config["pool_size"]))
    database = Database(engine, cast(Any, None))  # never crosses a bridge: _in_transaction is asyncio
    # Like `Database.transaction`, at most pool-size units of work at once, the others waiting in FIFO
    # order (asyncio's Semaphore is fair; SQLAlchemy's pool queue alone is not, and lets a worker
    # starve past the pool timeout).
    gate = asyncio.Semaphore(int(config["pool_size"]))

    async def run(work: Any, read_only: bool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        async with gate:
            return await database._in_transaction(work, read_only, args, kwargs)

    senders = config["senders"]
    recipients = config["recipients"]
    conversations = config["conversations"]
    warmup_s, duration_s = float(config["warmup_s"]), float(config["duration_s"])
    tag = uuid.uuid4().hex[:8]
    done: list[float] = []
    stop_at = time.monotonic() + warmup_s + duration_s

    async def worker(i: int) -> None:
        sender = senders[i]
        cursors = [0] * len(recipients[i])
        n = 0
        while time.monotonic() < stop_at:
            j = n % len(recipients[i])
            recipient = recipients[i][j]
            await run(
                messaging.send_message,
                False,
                (),
                {
                    "sender_id": sender["user_id"],
                    "sender_device_id": sender["device_id"],
                    "conversation_id": conversations[i][j],
                    "idempotency_key": f"limit-{tag}-{i}-{n}",
                    "body": BODY,
                    "media": [],
                    "clock_ms": wall_clock_ms,
                    "ack_grace_ms": 15_000,
                },
            )
            _, items = await run(messaging.pull_inbox, True, (recipient["user_id"], cursors[j], 50), {})
            cursors[j] = items[-1][0]
            await run(
                messaging.ack,
                False,
                (recipient["user_id"], recipient["device_id"], cursors[j], wall_clock_ms()),
                {},
            )
            done.append(time.monotonic())
            n += 1

    started = time.monotonic()
    try:
        tasks = [asyncio.create_task(worker(i)) for i in range(len(senders))]
        await asyncio.sleep(warmup_s)
        sessions0 = await _sessions(config["database_url"])
        window_start, first = time.monotonic(), _window_counters()
        await asyncio.sleep(duration_s)
        window_end, last = time.monotonic(), _window_counters()
        sessions1 = await _sessions(config["database_url"])
        await asyncio.gather(*tasks)
    finally:
        await engine.dispose()
    counted = sum(1 for t in done if window_start <= t <= window_end)
    return {
        "messages_per_s": counted / (window_end - window_start),
        "messages": counted,
        "seconds": window_end - window_start,
        "cpu_s": last[0] - first[0],
        "postgres_cpu_s": last[1] - first[1],
        "machine_busy_s": last[2] - first[2],
        "machine_irq_s": last[3] - first[3],
        "sessions": sessions1 - sessions0 - 1,  # minus the one that asked
        "wall_s": time.monotonic() - started,
    }


async def _sessions(database_url: str) -> int:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval(_SESSIONS_SQL) or 0)
    finally:
        await conn.close()


def _window_counters() -> tuple[float, float, float, float]:
    """(this process's CPU, PostgreSQL's CPU, the machine's busy CPU, its interrupts), seconds."""
    return self_cpu_s(), postgres_cpu_s(), machine_busy_s(), machine_interrupts_s()


def limit_worker() -> None:
    """Child process: read the config line, measure, print the result line."""
    config = json.loads(sys.stdin.readline())
    try:
        import uvloop

        result = uvloop.run(_limit_main(config))
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        result = asyncio.run(_limit_main(config))
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # wait for the parent to close


# --- /proc helpers -----------------------------------------------------------------------------------


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", encoding="ascii", errors="replace") as comm:
                    if comm.read().strip() == name:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def cpu_of(pids: Sequence[int], children: bool = False) -> float:
    """utime + stime of the processes; with `children`, plus what their reaped children used (for
    PostgreSQL: the postmaster accumulates the CPU of every backend that has exited, e.g. the
    connections a pool opened and closed during the window)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if children:
            ticks += int(fields[13]) + int(fields[14])
        total += ticks / os.sysconf("SC_CLK_TCK")
    return total


def postgres_cpu_s() -> float:
    return cpu_of(pids_named("postgres"), children=True)


_SESSIONS_SQL: Final = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"


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


async def database_counters(database_url: str, device_ids: Sequence[int]) -> tuple[int, int]:
    """(the recipients' acknowledged seqs summed, PostgreSQL sessions ever opened on the database)."""

    def query() -> tuple[int, int]:
        async def run() -> tuple[int, int]:
            import asyncpg

            conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                acked = await conn.fetchval(
                    "SELECT coalesce(sum(acked_seq), 0) FROM device_cursors WHERE device_id = ANY($1)",
                    list(device_ids),
                )
                sessions = await conn.fetchval(_SESSIONS_SQL)
            finally:
                await conn.close()
            return int(acked), int(sessions or 0)

        return asyncio.run(run())

    return await trio.to_thread.run_sync(query)


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


# --- profiling ---------------------------------------------------------------------------------------

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


async def measure_limit(cast_: Cast, options: Options, work: Path, name: str, progress: Any) -> Json:
    progress.phase(
        f"[limit] the same units of work on native asyncio, {options.senders} workers, "
        f"{options.warmup_s:g} + {options.limit_s:g} s ({name})"
    )
    child = await Child.start("bench.e2e", f"limit-{name}", work, args=["--limit-worker"])
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


async def server_version(database_url: str) -> str:
    def query() -> str:
        async def run() -> str:
            import asyncpg

            conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                return str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()

        return asyncio.run(run())

    return await trio.to_thread.run_sync(query)


async def prepare_database(database_url: str) -> None:
    """Drop and create the scratch database (the one named in the URL), then migrate it."""
    name = database_url.rsplit("/", 1)[1]
    if not name.replace("_", "").isalnum():
        raise BenchError(f"refusing to drop a database named {name!r}")
    admin_url = database_url.rsplit("/", 1)[0].replace("postgresql+asyncpg://", "postgresql://") + "/postgres"

    def admin() -> None:
        async def run() -> None:
            import asyncpg

            conn = await asyncpg.connect(admin_url, timeout=5)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(run())

    try:
        await trio.to_thread.run_sync(admin)
    except OSError as exc:
        raise BenchError(f"PostgreSQL is not reachable at {admin_url}: {exc}") from exc
    await trio.to_thread.run_sync(lambda: run_cli("migrate", "--database-url", database_url))


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
    parser.add_argument("--limit-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.limit_worker:
        limit_worker()
        return 0
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
