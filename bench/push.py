"""Benchmark: the push bridge, pushes/s through the real worker and outbox claim throughput.

Run ``.venv/bin/python -m bench.push`` (``--help`` for the knobs); it writes bench/results/push.md.

Everything goes through `PushWorker.run_once` loops (claim a batch with `store.claim_due`, the pure
policy, the provider, one finish transaction per job) on a scratch PostgreSQL database created,
migrated with `pingpull.db.migrate.upgrade` and dropped by the run (plus a SQLite file for one
comparison). The database and the bridge are opened the way `pingpull.compose` opens the kernel:
`open_asyncio_bridge()` + `open_database(url, bridge)` (pool of 10, as shipped).

Each trial truncates the outbox tables, seeds N devices with push tokens and N due `push_jobs`
rows (one user, as tests/integration/test_push_worker.py does), ANALYZEs them, then times draining
the outbox. Afterwards it checks that every device was pushed exactly once (the fake's own request
records, or the no-op provider's), that the outbox is empty and that every device got its
``last_push_seq`` (the worker's `finish_delivered` ran for all).

1. Pushes/s through the worker, one worker: (a) `ApnsProvider` (aioapns on the bridge, HTTP/2
   over TLS with ALPN h2, ``max_connections=1``: one connection, many concurrent streams) against
   tests/support/fake_apns.py answering 200 (it verifies the ES256 provider JWT on every request);
   (b) `FcmProvider` (pyfcm + requests in worker threads, HTTP/1.1 keep-alive) against
   tests/support/fake_fcm.py (OAuth grant + messages:send); (c) a no-op provider (answers DELIVERED
   at once and counts), the worker's own ceiling: claim + finish transactions only. The fakes run in
   a child process each (so their CPU is not the worker's, and is measured on its own); the same
   providers are also timed alone (no database, same concurrency 64) as the provider's ceiling.
2. Claim throughput: the no-op provider with 1, 2 and 4 workers (each its own `claim_id`) sharing
   the PostgreSQL outbox (``FOR UPDATE SKIP LOCKED``), both as workers in one process (one bridge,
   one pool) and as one process per worker (2 and 4; started before the clock, pools filled before
   each trial and emptied after it, so PostgreSQL's 100 connections suffice); SQLite with one
   worker for comparison. Sends are counted per device, so a double claim shows up as a device
   pushed twice. These trials (and the ablations) drain ``--claim-jobs`` (3,000) to fit the time.
3. Ablations of the no-op worker (not the shipped configuration, to locate the cost), one engine
   setting each: 20 pooled connections and no overflow (the shipped pool of 10 + 10 overflow closes
   its overflow connections whenever the load dips, at every batch tail, and reopens them for the
   next batch), ``pool_pre_ping`` off, ``synchronous_commit=off`` for the session.

Trials run in rounds, the order rotating per round; rates are the median over rounds. CPU is read
from /proc per thread (trio thread, the bridge's asyncio thread, other threads), per process (the
fakes, worker processes, every ``postgres`` process) and for the whole machine, so the "others"
column is CPU used meanwhile by processes outside this benchmark. PostgreSQL's CPU includes what the
postmaster reaped from backends that exited (closed connections), and any other database's backends
(the server is shared); new connections are counted with a pool "connect" event.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Final, ParamSpec, TypeVar

import asyncpg  # type: ignore[import-untyped]
import trio
import trio.lowlevel
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from pingpull.aio import AsyncioBridge, open_asyncio_bridge
from pingpull.db import migrate
from pingpull.db.engine import Database, open_database
from pingpull.db.schema import devices, push_jobs, users
from push_bridge import payloads, store
from push_bridge.providers.apns import ApnsConfig, ApnsEndpoint, ApnsProvider
from push_bridge.providers.base import Outcome, PushOutcome, PushProvider, PushRequest
from push_bridge.providers.fcm import FcmConfig, FcmProvider
from push_bridge.worker import PushWorker, WorkerSettings

P = ParamSpec("P")
T = TypeVar("T")

REPO: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = REPO / "bench" / "results" / "push.md"
KEY_ID: Final = "BENCHKEY01"
TEAM_ID: Final = "BENCHTEAM1"
TOPIC: Final = "dev.pingpull.bench"
PROJECT: Final = "pingpull-bench"
SA_EMAIL: Final = "push@pingpull-bench.iam.gserviceaccount.com"
TICK: Final = os.sysconf("SC_CLK_TCK")
PACKAGES: Final = (
    "trio",
    "SQLAlchemy",
    "asyncpg",
    "aiosqlite",
    "uvloop",
    "aioapns",
    "h2",
    "pyfcm",
    "requests",
    "google-auth",
    "h11",
)

Json = dict[str, Any]
ABLATIONS: Final = {
    "abl-pool": "pool_size 20, max_overflow 0 (the same 20 connections at most, none closed and reopened)",
    "abl-no-ping": "pool_pre_ping off",
    "abl-async-commit": "synchronous_commit=off for the session",
}


def apns_token(i: int) -> str:
    return f"{i:064x}"


def fcm_token(i: int) -> str:
    return f"fcm-{i:08d}-" + "x" * 140


# ---------------------------------------------------------------------------------------------------
# CPU accounting (/proc)


def _stat_ticks(path: str, *, reaped: bool = False) -> int:
    """utime + stime of a /proc/<pid>/stat or /proc/self/task/<tid>/stat file, in clock ticks;
    with ``reaped``, plus the CPU of the children it has waited for (cutime + cstime)."""
    try:
        with open(path, encoding="ascii") as handle:
            data = handle.read()
    except OSError:
        return 0
    fields = data.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def _postgres_ticks() -> int:
    """Every postgres process, plus what the postmaster reaped: a backend that exits mid-trial (the
    pool closes overflow connections) moves its CPU from its own stat to the postmaster's cutime."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", encoding="ascii") as handle:
                if handle.read().strip() != "postgres":
                    continue
        except OSError:
            continue
        total += _stat_ticks(f"/proc/{entry.name}/stat", reaped=True)
    return total


def _machine_busy_ticks() -> int:
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    guest = sum(values[8:10]) if len(values) > 9 else 0  # already counted in user/nice
    return sum(values) - idle - guest


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuSnap:
    wall: float
    own: float
    trio: int
    bridge: int
    fake: int
    children: int
    postgres: int
    busy: int


@dataclass
class CpuProbe:
    """Where the CPU goes: this process by thread, the fake, worker processes, PostgreSQL, others."""

    trio_tid: int
    bridge_tid: int
    fake_pid: int | None = None
    child_pids: tuple[int, ...] = ()

    def snap(self) -> CpuSnap:
        return CpuSnap(
            wall=time.perf_counter(),
            own=_self_cpu_s(),
            trio=_stat_ticks(f"/proc/self/task/{self.trio_tid}/stat"),
            bridge=_stat_ticks(f"/proc/self/task/{self.bridge_tid}/stat"),
            fake=_stat_ticks(f"/proc/{self.fake_pid}/stat") if self.fake_pid else 0,
            children=sum(_stat_ticks(f"/proc/{pid}/stat") for pid in self.child_pids),
            postgres=_postgres_ticks(),
            busy=_machine_busy_ticks(),
        )

    @staticmethod
    def diff(before: CpuSnap, after: CpuSnap) -> dict[str, float]:
        """CPU seconds by bucket over the interval."""
        own = after.own - before.own
        trio_s = (after.trio - before.trio) / TICK
        bridge_s = (after.bridge - before.bridge) / TICK
        fake = (after.fake - before.fake) / TICK
        children = (after.children - before.children) / TICK
        postgres = (after.postgres - before.postgres) / TICK
        busy = (after.busy - before.busy) / TICK
        return {
            "wall": after.wall - before.wall,
            "trio": trio_s,
            "bridge": bridge_s,
            "threads": max(0.0, own - trio_s - bridge_s),
            "children": children,
            "postgres": postgres,
            "fake": fake,
            "others": max(0.0, busy - own - fake - children - postgres),
            "busy": busy,
        }


async def _native_id() -> int:
    return threading.get_native_id()


# ---------------------------------------------------------------------------------------------------
# the database


class TimedDatabase(Database):
    """The worker's database, timing its transactions: claims (sequential per worker) and finishes."""

    def __init__(self, inner: Database) -> None:
        super().__init__(inner.engine, inner.bridge)
        self.claim_s = 0.0
        self.claims = 0
        self.finish_ms: list[float] = []

    async def transaction(
        self, work: Callable[..., Coroutine[Any, Any, T]], /, *args: Any, **kwargs: Any
    ) -> T:
        started = time.perf_counter()
        try:
            return await super().transaction(work, *args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            if work is store.claim_due:
                self.claim_s += elapsed
                self.claims += 1
            else:
                self.finish_ms.append(elapsed * 1000)


CONNECTS: Counter[int] = Counter()  # new DBAPI connections opened, by id(engine)


def count_connects(database: Database) -> Database:
    key = id(database.engine)

    def on_connect(*_args: Any) -> None:
        CONNECTS[key] += 1

    event.listen(database.engine.sync_engine, "connect", on_connect)
    return database


def connects(database: Database) -> int:
    return CONNECTS[id(database.engine)]


async def _hold(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))
    await asyncio.sleep(0.02)


async def warm(database: Database, connections: int) -> None:
    """Fill the pool (``connections`` at once) so no trial pays for connecting its steady pool."""
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(database.read, _hold)


async def _truncate(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("TRUNCATE users, devices, push_jobs, device_cursors RESTART IDENTITY CASCADE")
        )
    else:
        for table in ("push_jobs", "device_cursors", "devices", "users"):
            await conn.execute(text(f"DELETE FROM {table}"))


async def _seed(conn: AsyncConnection, provider: str, tokens: Sequence[str]) -> dict[str, int]:
    user_id = (
        await conn.execute(
            insert(users).values(handle="bench", inbox_head=1, created_at_ms=0).returning(users.c.id)
        )
    ).scalar_one()
    rows = [
        {
            "user_id": user_id,
            "name": "",
            "push_provider": provider,
            "push_token": token,
            "push_environment": "production" if provider == "apns" else None,
            "created_at_ms": 0,
        }
        for token in tokens
    ]
    result = await conn.execute(insert(devices).returning(devices.c.id, devices.c.push_token), rows)
    by_token = {row.push_token: row.id for row in result}
    await conn.execute(
        insert(push_jobs),
        [
            {
                "device_id": d,
                "user_id": user_id,
                "seq": 1,
                "not_before_ms": 0,
                "attempts": 0,
                "created_at_ms": 0,
            }
            for d in by_token.values()
        ],
    )
    return by_token


async def _analyze(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("ANALYZE users, devices, push_jobs, device_cursors"))


async def _left(conn: AsyncConnection) -> tuple[int, int]:
    """(jobs still in the outbox, devices whose last push recorded seq 1)."""
    jobs = (await conn.execute(select(func.count()).select_from(push_jobs))).scalar_one()
    marked = (await conn.execute(select(func.count()).where(devices.c.last_push_seq == 1))).scalar_one()
    return int(jobs), int(marked)


async def prepare(database: Database, provider: str, tokens: Sequence[str]) -> dict[str, int]:
    await database.transaction(_truncate)
    by_token = await database.transaction(_seed, provider, tokens)
    await database.transaction(_analyze)
    return by_token


def pg_admin(dsn: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def pg_query(dsn: str, sql: str) -> str:
    async def run() -> str:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return str(await conn.fetchval(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------------
# providers and workers


class NoopProvider(PushProvider):
    """Delivered at once; counts sends per device (the worker's own ceiling)."""

    name = "noop"

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def send(self, request: PushRequest) -> PushOutcome:
        self.sent.append(request.device_id)
        await trio.lowlevel.checkpoint()
        return PushOutcome(Outcome.DELIVERED)


def make_worker(database: Database, provider: PushProvider, args: argparse.Namespace) -> PushWorker:
    return PushWorker(
        database,
        {"apns": provider, "fcm": provider},
        WorkerSettings(batch_size=args.batch_size, concurrency=args.concurrency),
        rng=random.Random(7),
    )


async def drain(worker: PushWorker) -> None:
    while await worker.run_once():
        pass


async def drain_all(workers: Sequence[PushWorker]) -> None:
    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(drain, worker)


def send_seconds(workers: Sequence[PushWorker], provider: str) -> tuple[float, float]:
    total = count = 0.0
    for worker in workers:
        labels = {"provider": provider}
        total += worker.metrics.registry.get_sample_value("pingpull_push_send_seconds_sum", labels) or 0.0
        count += worker.metrics.registry.get_sample_value("pingpull_push_send_seconds_count", labels) or 0.0
    return total, count


def delivered(workers: Sequence[PushWorker], provider: str) -> int:
    labels = {"provider": provider, "outcome": "delivered"}
    return int(
        sum(
            sum(
                sample.value
                for metric in worker.metrics.outcomes.collect()
                for sample in metric.samples
                if sample.name.endswith("_total")
                and all(sample.labels.get(k) == v for k, v in labels.items())
            )
            for worker in workers
        )
    )


# ---------------------------------------------------------------------------------------------------
# child processes: the fakes, and workers of their own


def _out(message: Json) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _commands(handle: Callable[[Json], Awaitable[Json | None]]) -> None:
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line or line.strip() == "quit":
            return
        reply = await handle(json.loads(line))
        if reply is not None:
            _out(reply)


async def _fake_apns_child(tls_dir: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from tests.support.fake_apns import open_fake_apns

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_dir / "server.pem")
    context.set_alpn_protocols(["h2"])
    public_key = load_pem_public_key((tls_dir / "apns_public.pem").read_bytes())
    async with open_fake_apns(context, provider_keys={KEY_ID: public_key}, team_id=TEAM_ID) as fake:
        _out({"port": fake.port, "pid": os.getpid()})

        async def handle(command: Json) -> Json | None:
            if command["op"] == "reset":
                fake.requests.clear()
                return {"ok": True}
            return {
                "tokens": [record.token for record in fake.requests],
                "connections": len(fake.connections),
                "open_connections": len(fake.open_connections),
                "alpn": sorted({str(conn.alpn) for conn in fake.connections}),
                "jwts": len(fake.jwts()),
            }

        await _commands(handle)


async def _fake_fcm_child(tls_dir: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from tests.support.fake_fcm import open_fake_fcm

    public_key = load_pem_public_key((tls_dir / "sa_public.pem").read_bytes())
    async with open_fake_fcm(PROJECT, SA_EMAIL, public_key) as fake:
        _out({"port": fake.port, "pid": os.getpid()})

        async def handle(command: Json) -> Json | None:
            if command["op"] == "reset":
                fake.messages.clear()
                return {"ok": True}
            return {
                "tokens": [record.token for record in fake.messages],
                "connections": fake.connections,
                "token_requests": len(fake.token_requests),
            }

        await _commands(handle)


async def _worker_child(url: str, args: argparse.Namespace) -> None:
    async with (
        open_asyncio_bridge() as bridge,
        open_database(url, bridge, pool_size=args.pool_size) as database,
    ):
        count_connects(database)
        _out({"pid": os.getpid()})

        async def handle(command: Json) -> Json | None:
            # Pools are filled before a trial and emptied after it: PostgreSQL's max_connections
            # (100) does not hold every pool of this run at once.
            if command["op"] == "warm":
                await warm(database, args.pool_size)
                return {"ok": True}
            if command["op"] == "idle":
                await database.dispose()
                return {"ok": True}
            provider = NoopProvider()
            opened_before = connects(database)
            timed = TimedDatabase(database)
            worker = make_worker(timed, provider, args)
            started = time.perf_counter()
            await drain(worker)
            return {
                "sent": provider.sent,
                "elapsed": time.perf_counter() - started,
                "claim_s": timed.claim_s,
                "claims": timed.claims,
                "finish_ms": statistics.median(timed.finish_ms) if timed.finish_ms else 0.0,
                "claim_id": worker.claim_id,
                "connects": connects(database) - opened_before,
            }

        await _commands(handle)


class Child:
    """A child process speaking one JSON line per command."""

    def __init__(self, process: trio.Process, label: str) -> None:
        self.process = process
        self.label = label
        self._buffer = bytearray()
        self.pid = process.pid

    @classmethod
    async def start(cls, label: str, argv: Sequence[str], log: IO[bytes]) -> tuple[Child, Json]:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.push", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=str(REPO),
        )
        child = cls(process, label)
        with trio.fail_after(60):
            first = await child.read()
        return child, first

    async def read(self) -> Json:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(1 << 20)
            if not chunk:
                raise RuntimeError(f"{self.label} exited (code {self.process.poll()}), see its log")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        message: Json = json.loads(line)
        return message

    async def send(self, command: Json) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def ask(self, command: Json) -> Json:
        await self.send(command)
        return await self.read()

    async def close(self) -> None:
        with trio.move_on_after(5):
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.send({"op": "quit"})
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def child_argv(kind: str, *extra: str) -> list[str]:
    return ["--child", kind, *extra]


# ---------------------------------------------------------------------------------------------------
# trials


@dataclass
class Trial:
    jobs: int
    wall_s: float
    cpu: dict[str, float]
    ok: bool
    note: str
    claim_s: float = 0.0
    claims: int = 0
    finish_ms: float | None = None
    send_ms: float | None = None
    connections: int | None = None
    connects: int = 0

    @property
    def rate(self) -> float:
        return self.jobs / self.wall_s if self.wall_s else 0.0


def check_once(sent: Counter[Any], expected: Sequence[Any]) -> tuple[bool, str]:
    wanted = set(expected)
    missing = len(wanted - set(sent))
    extra = len(set(sent) - wanted)
    doubles = sum(1 for count in sent.values() if count > 1)
    most = max(sent.values(), default=0)
    ok = not missing and not extra and not doubles and len(sent) == len(wanted)
    note = f"{sum(sent.values()):,} sends to {len(sent):,}/{len(wanted):,} devices, max {most}/device"
    if not ok:
        note += f" (missing {missing}, unexpected {extra}, sent twice+ {doubles})"
    return ok, note


def check_outbox(left: tuple[int, int], jobs: int) -> tuple[bool, str]:
    remaining, marked = left
    ok = remaining == 0 and marked == jobs
    return ok, f"outbox left {remaining}, last_push_seq set {marked:,}"


@dataclass
class Bench:
    args: argparse.Namespace
    bridge: AsyncioBridge
    pg: Database
    probe: CpuProbe
    sqlite: Database | None = None
    ablations: dict[str, Database] = field(default_factory=dict)
    apns: ApnsProvider | None = None
    fcm: FcmProvider | None = None
    fake_apns: Child | None = None
    fake_fcm: Child | None = None
    worker_children: list[Child] = field(default_factory=list)

    def pg_databases(self) -> list[Database]:
        return [self.pg, *self.ablations.values()]

    async def settle(self, using: Database | None) -> None:
        """Empty every pool but the one the trial uses, and fill that one."""
        for database in self.pg_databases():
            if database is not using:
                await database.dispose()
        if using is not None:
            size: Callable[[], int] | None = getattr(using.engine.pool, "size", None)
            await warm(using, size() if size is not None else self.args.pool_size)

    @contextmanager
    def measure(
        self, fake: Child | None = None, children: Sequence[Child] = ()
    ) -> Iterator[dict[str, float]]:
        self.probe.fake_pid = fake.pid if fake else None
        self.probe.child_pids = tuple(child.pid for child in children)
        cpu: dict[str, float] = {}
        before = self.probe.snap()
        yield cpu
        cpu.update(self.probe.diff(before, self.probe.snap()))

    # -- through the worker, in this process

    async def worker_trial(
        self, kind: str, jobs: int, *, workers: int = 1, database: Database | None = None
    ) -> Trial:
        database = database or self.pg
        fake: Child | None = None
        provider: PushProvider
        if kind == "apns":
            assert self.apns is not None and self.fake_apns is not None
            provider, fake, tokens, label = (
                self.apns,
                self.fake_apns,
                [apns_token(i) for i in range(jobs)],
                "apns",
            )
        elif kind == "fcm":
            assert self.fcm is not None and self.fake_fcm is not None
            provider, fake, tokens, label = (
                self.fcm,
                self.fake_fcm,
                [fcm_token(i) for i in range(jobs)],
                "fcm",
            )
        else:
            provider, tokens, label = NoopProvider(), [apns_token(i) for i in range(jobs)], "apns"
        by_token = await prepare(database, label, tokens)
        if fake is not None:
            await fake.ask({"op": "reset"})
        timed = [TimedDatabase(database) for _ in range(workers)]
        pool = [make_worker(db, provider, self.args) for db in timed]
        await self.settle(database)
        opened_before = connects(database)
        with self.measure(fake) as cpu:
            await drain_all(pool)
        opened = connects(database) - opened_before
        left = await database.read(_left)
        connections = None
        if fake is not None:
            stats = await fake.ask({"op": "stats"})
            ok, note = check_once(Counter(stats["tokens"]), tokens)
            connections = int(stats["connections"])
            if kind == "apns":
                note += f", {stats['open_connections']} connection(s) open (ALPN {'/'.join(stats['alpn'])}), "
                note += f"{stats['jwts']} JWT"
        else:
            assert isinstance(provider, NoopProvider)
            ok, note = check_once(Counter(provider.sent), list(by_token.values()))
        ok_outbox, outbox_note = check_outbox(left, jobs)
        ok_metric = delivered(pool, provider.name) == jobs
        total, count = send_seconds(pool, provider.name)
        finishes = [ms for db in timed for ms in db.finish_ms]
        return Trial(
            jobs=jobs,
            wall_s=cpu["wall"],
            cpu=cpu,
            ok=ok and ok_outbox and ok_metric,
            note=f"{note}; {outbox_note}" + ("" if ok_metric else "; delivered metric mismatch"),
            claim_s=sum(db.claim_s for db in timed) / workers,
            claims=sum(db.claims for db in timed),
            finish_ms=statistics.median(finishes) if finishes else None,
            send_ms=1000 * total / count if count else None,
            connections=connections,
            connects=opened,
        )

    # -- through workers in processes of their own

    async def process_trial(self, processes: int, jobs: int) -> Trial:
        children = self.worker_children[:processes]
        by_token = await prepare(self.pg, "apns", [apns_token(i) for i in range(jobs)])
        await self.settle(None)
        for child in children:
            await child.ask({"op": "warm"})
        with self.measure(None, children) as cpu:
            for child in children:
                await child.send({"op": "go"})
            replies = [await child.read() for child in children]
        for child in children:
            await child.ask({"op": "idle"})
        left = await self.pg.read(_left)
        sent: Counter[int] = Counter()
        for reply in replies:
            sent.update(reply["sent"])
        ok, note = check_once(sent, list(by_token.values()))
        ok_outbox, outbox_note = check_outbox(left, jobs)
        claim_ids = {reply["claim_id"] for reply in replies}
        per_worker = "/".join(f"{len(reply['sent']):,}" for reply in replies)
        return Trial(
            jobs=jobs,
            wall_s=cpu["wall"],
            cpu=cpu,
            ok=ok and ok_outbox and len(claim_ids) == processes,
            note=f"{note}; {outbox_note}; per worker {per_worker}",
            claim_s=sum(float(reply["claim_s"]) for reply in replies) / processes,
            claims=sum(int(reply["claims"]) for reply in replies),
            finish_ms=statistics.median(float(reply["finish_ms"]) for reply in replies),
            connects=sum(int(reply["connects"]) for reply in replies),
        )

    # -- the providers alone: no database, the worker's concurrency

    async def provider_trial(self, kind: str, jobs: int) -> Trial:
        now_s = int(time.time())
        options = payloads.PayloadOptions()
        provider: PushProvider
        if kind == "apns":
            assert self.apns is not None and self.fake_apns is not None
            provider, fake = self.apns, self.fake_apns
            tokens = [apns_token(i) for i in range(jobs)]
            requests = [
                payloads.apns_request(i, t, "production", 1, now_s, options) for i, t in enumerate(tokens)
            ]
        else:
            assert self.fcm is not None and self.fake_fcm is not None
            provider, fake = self.fcm, self.fake_fcm
            tokens = [fcm_token(i) for i in range(jobs)]
            requests = [payloads.fcm_request(i, t, 1, options) for i, t in enumerate(tokens)]
        await fake.ask({"op": "reset"})
        limiter = trio.CapacityLimiter(self.args.concurrency)
        outcomes: Counter[Outcome] = Counter()

        async def one(request: PushRequest) -> None:
            async with limiter:
                outcomes[(await provider.send(request)).outcome] += 1

        with self.measure(fake) as cpu:
            async with trio.open_nursery() as nursery:
                for request in requests:
                    nursery.start_soon(one, request)
        stats = await fake.ask({"op": "stats"})
        ok, note = check_once(Counter(stats["tokens"]), tokens)
        ok = ok and outcomes[Outcome.DELIVERED] == jobs
        return Trial(jobs=jobs, wall_s=cpu["wall"], cpu=cpu, ok=ok, note=note)


# ---------------------------------------------------------------------------------------------------
# the run


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    jobs: int
    run: Callable[[], Awaitable[Trial]]


def scenarios(bench: Bench, args: argparse.Namespace, jobs_scale: float = 1.0) -> list[Scenario]:
    n = max(args.batch_size, int(args.jobs * jobs_scale))
    n_fcm = max(args.batch_size, int(args.fcm_jobs * jobs_scale))
    nc = max(args.batch_size, int(args.claim_jobs * jobs_scale))
    out = [
        Scenario(
            "apns", "APNs: ApnsProvider, HTTP/2, 1 connection", n, lambda: bench.worker_trial("apns", n)
        ),
        Scenario(
            "fcm", "FCM: FcmProvider, HTTP/1.1, 8 threads", n_fcm, lambda: bench.worker_trial("fcm", n_fcm)
        ),
        Scenario("noop-1", "no-op provider (worker ceiling)", n, lambda: bench.worker_trial("noop", n)),
        Scenario(
            "apns-alone", "APNs provider alone, no database", n, lambda: bench.provider_trial("apns", n)
        ),
        Scenario(
            "fcm-alone", "FCM provider alone, no database", n_fcm, lambda: bench.provider_trial("fcm", n_fcm)
        ),
    ]
    for count in args.workers:
        if count == 1:
            continue  # the one-worker baseline is "noop-1" (a worker alone in its own process is the same)
        out.append(
            Scenario(
                f"noop-{count}",
                f"no-op, {count} workers in one process",
                nc,
                partial(bench.worker_trial, "noop", nc, workers=count),
            )
        )
        if bench.worker_children:
            out.append(
                Scenario(
                    f"proc-{count}",
                    f"no-op, {count} worker processes",
                    nc,
                    partial(bench.process_trial, count, nc),
                )
            )
    if bench.sqlite is not None:
        out.append(
            Scenario(
                "sqlite-1",
                "SQLite: no-op, 1 worker",
                nc,
                partial(bench.worker_trial, "noop", nc, database=bench.sqlite),
            )
        )
    for key, database in bench.ablations.items():
        out.append(
            Scenario(key, ABLATIONS[key], nc, partial(bench.worker_trial, "noop", nc, database=database))
        )
    return out


@asynccontextmanager
async def opened(
    args: argparse.Namespace, pg_url: str, sqlite_url: str | None, tls: Path, log: IO[bytes]
) -> AsyncIterator[Bench]:
    import trustme
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(tls / "server.pem")
    )
    apns_key = ec.generate_private_key(ec.SECP256R1())
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    (tls / "apns_public.pem").write_bytes(
        apns_key.public_key().public_bytes(serialization.Encoding.PEM, public)
    )
    (tls / "sa_public.pem").write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM, public))
    private = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    apns_pem = apns_key.private_bytes(*private).decode()
    sa_pem = sa_key.private_bytes(*private).decode()

    async with AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(open_asyncio_bridge())
        pg = count_connects(
            await stack.enter_async_context(open_database(pg_url, bridge, pool_size=args.pool_size))
        )
        probe = CpuProbe(threading.get_native_id(), await bridge.run(_native_id))
        bench = Bench(args, bridge, pg, probe)
        if sqlite_url:
            bench.sqlite = count_connects(await stack.enter_async_context(open_database(sqlite_url, bridge)))
        if args.ablations:
            # Each changes one thing of what pingpull.db.engine.create_engine builds.
            shipped: Json = {
                "pool_size": args.pool_size,
                "max_overflow": args.pool_size,
                "pool_timeout": 10,
                "pool_pre_ping": True,
            }
            variants: list[Json] = [
                {"pool_size": 2 * args.pool_size, "max_overflow": 0},
                {"pool_pre_ping": False},
                {"connect_args": {"server_settings": {"synchronous_commit": "off"}}},
            ]
            for key, change in zip(ABLATIONS, variants, strict=True):
                engine = create_async_engine(pg_url, **(shipped | change))
                database = count_connects(Database(engine, bridge))
                stack.push_async_callback(database.dispose)
                bench.ablations[key] = database

        bench.fake_apns, hello = await Child.start("fake APNs", child_argv("fake-apns", str(tls)), log)
        stack.push_async_callback(bench.fake_apns.close)
        endpoint = ApnsEndpoint("127.0.0.1", int(hello["port"]))
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        client_context.set_alpn_protocols(["h2"])
        config = ApnsConfig(
            KEY_ID,
            TEAM_ID,
            TOPIC,
            key_pem=apns_pem,
            production=endpoint,
            sandbox=endpoint,
            max_connections=1,
        )
        bench.apns = await ApnsProvider.open(bridge, config, ssl_context=client_context)
        stack.push_async_callback(bench.apns.aclose)

        bench.fake_fcm, hello = await Child.start("fake FCM", child_argv("fake-fcm", str(tls)), log)
        stack.push_async_callback(bench.fake_fcm.close)
        base = f"http://127.0.0.1:{hello['port']}"
        account = {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "0123456789abcdef",
            "private_key": sa_pem,
            "client_email": SA_EMAIL,
            "client_id": "100000000000000000001",
            "token_uri": f"{base}/token",
        }
        bench.fcm = FcmProvider(FcmConfig(service_account=account, endpoint_base=f"{base}/v1/projects"))
        stack.push_async_callback(bench.fcm.aclose)

        if args.processes:
            argv = child_argv("worker", pg_url, "--pool-size", str(args.pool_size))
            argv += ["--batch-size", str(args.batch_size), "--concurrency", str(args.concurrency)]
            children: list[Child | None] = [None] * (max(args.workers) if max(args.workers) > 1 else 0)

            async def start(i: int) -> None:
                children[i] = (await Child.start(f"worker {i}", argv, log))[0]

            try:
                async with trio.open_nursery() as nursery:
                    for i in range(len(children)):
                        nursery.start_soon(start, i)
            finally:
                for child in children:
                    if child is not None:
                        stack.push_async_callback(child.close)
                        bench.worker_children.append(child)
        yield bench


@dataclass
class Results:
    trials: dict[str, list[Trial]]
    labels: dict[str, str]
    order: list[list[str]]
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


async def measure(
    args: argparse.Namespace, pg_url: str, sqlite_url: str | None, tls: Path, log: IO[bytes]
) -> Results:
    results = Results({}, {}, [], os.getloadavg())
    async with opened(args, pg_url, sqlite_url, tls, log) as bench:
        if args.warmup:
            for scenario in scenarios(bench, args, jobs_scale=0.02):
                trial = await scenario.run()
                if not trial.ok:
                    raise SystemExit(f"warm-up {scenario.key} failed its checks: {trial.note}")
        planned = scenarios(bench, args)
        for scenario in planned:
            results.labels[scenario.key] = scenario.label
            results.trials[scenario.key] = []
        for round_no in range(args.rounds):
            shift = round_no % len(planned)
            order = planned[shift:] + planned[:shift]
            results.order.append([s.key for s in order])
            for scenario in order:
                trial = await scenario.run()
                results.trials[scenario.key].append(trial)
                mark = "ok" if trial.ok else "FAILED"
                print(
                    f"round {round_no + 1}: {scenario.key:24} {trial.rate:9,.0f}/s  {mark}  {trial.note}",
                    file=sys.stderr,
                    flush=True,
                )
        assert bench.apns is not None and bench.fcm is not None
        results.extra["apns_tokens_minted"] = bench.apns.tokens_minted
        results.extra["fcm_tokens_fetched"] = bench.fcm.tokens_fetched
    results.load_end = os.getloadavg()
    return results


# ---------------------------------------------------------------------------------------------------
# the report


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}×" if baseline else "n/a"


def _median_rate(trials: Sequence[Trial]) -> float:
    return statistics.median(t.rate for t in trials)


def _per_round(trials: Sequence[Trial]) -> str:
    return " / ".join(_rate(t.rate) for t in trials)


def _ms(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    return f"{statistics.median(present):.2f}" if present else "-"


def _verified(trials: Sequence[Trial]) -> str:
    bad = sum(1 for t in trials if not t.ok)
    return f"all {len(trials)} ok" if not bad else f"**{bad} of {len(trials)} FAILED**"


def _connects(trials: Sequence[Trial]) -> str:
    return f"{100 * sum(t.connects for t in trials) / sum(t.jobs for t in trials):.1f}"


def _claim_share(trials: Sequence[Trial]) -> str:
    return f"{100 * sum(t.claim_s for t in trials) / sum(t.wall_s for t in trials):.0f}%"


def _cpus(trials: Sequence[Trial], key: str) -> float:
    return sum(t.cpu.get(key, 0.0) for t in trials) / sum(t.wall_s for t in trials)


def _us_per_push(trials: Sequence[Trial], keys: Sequence[str]) -> float:
    return 1e6 * sum(t.cpu.get(k, 0.0) for t in trials for k in keys) / sum(t.jobs for t in trials)


def code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":!bench"], cwd=REPO, capture_output=True, text=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    paths = [line[3:] for line in dirty if line.strip()]
    if not paths:
        return f"commit {commit} (no uncommitted changes outside bench/)"
    return f"commit {commit}; uncommitted outside bench/ (not this benchmark's): {', '.join(paths[:5])}"


def machine_info(pg_version: str, pg_settings: str, results: Results) -> list[str]:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for name in PACKAGES:
        with suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{name} {importlib.metadata.version(name)}")
    ls, le = results.load_start, results.load_end
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} vCPU ({cpu}), {platform.system()} {platform.release()}; "
        f"load average (1/5/15 min) at start {ls[0]:.2f} / {ls[1]:.2f} / {ls[2]:.2f}, "
        f"at end {le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f}",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- libraries: {', '.join(versions)}",
        f"- database: PostgreSQL {pg_version}, same machine (loopback), {pg_settings}; "
        "SQLite: WAL, synchronous=NORMAL (pingpull's pragmas), a file under /tmp",
        f"- code: {code_version()}",
    ]


def reading(results: Results, args: argparse.Namespace) -> list[str]:
    """The facts the tables imply, computed (so a re-run keeps them true)."""
    trials = results.trials
    noop = trials["noop-1"]
    mine = ("trio", "bridge", "threads", "children")
    noop_us = _us_per_push(noop, mine)
    noop_pg = _us_per_push(noop, ("postgres",))
    bridge_share = 100 * _cpus(noop, "bridge") / max(1e-9, sum(_cpus(noop, k) for k in mine))
    out = ["## Reading the numbers (computed from this run)", ""]
    out.append(
        f"- The no-op worker's own cost: {noop_us:.0f} µs CPU per job in the worker process "
        f"({bridge_share:.0f}% of it on the bridge's asyncio thread: SQLAlchemy + asyncpg, one finish "
        f"transaction per job) and {noop_pg:.0f} µs in PostgreSQL; the machine was "
        f"{_cpus(noop, 'busy'):.2f} of 2 CPUs busy."
    )
    if "abl-pool" in trials:
        pool = trials["abl-pool"]
        pool_pg = _us_per_push(pool, ("postgres",))
        finish = f"{_ms([t.finish_ms for t in noop])} → {_ms([t.finish_ms for t in pool])} ms"
        gain = _ratio(_median_rate(pool), _median_rate(noop))
        out.append(
            f"- Connection churn: with the shipped pool ({args.pool_size} + {args.pool_size} overflow) and "
            f"concurrency {args.concurrency}, {_connects(noop)} new PostgreSQL connections are opened "
            "per 100 jobs (the overflow is closed at every batch tail and reopened by the next batch). "
            f"The same 20 connections kept open: {gain} the jobs/s, PostgreSQL CPU "
            f"{noop_pg:.0f} → {pool_pg:.0f} µs per job, finish transaction p50 {finish}."
        )
    for key, what in (("abl-no-ping", "pool_pre_ping off"), ("abl-async-commit", "synchronous_commit=off")):
        if key in trials:
            out.append(
                f"- {what}: {_ratio(_median_rate(trials[key]), _median_rate(noop))} of the shipped rate."
            )
    for key, name in (("apns", "APNs"), ("fcm", "FCM")):
        ts, alone = trials[key], trials[f"{key}-alone"]
        busy = sum(_cpus(ts, k) for k in mine)
        alone_busy = sum(_cpus(alone, k) for k in mine)
        out.append(
            f"- {name} through the worker: {_us_per_push(ts, mine):.0f} µs CPU per push in the worker "
            f"process (no-op: {noop_us:.0f}), {busy:.2f} CPUs of it busy (one Python process, one GIL); the "
            f"fake used {_us_per_push(ts, ('fake',)):.0f} µs per push. Provider alone: "
            f"{_rate(_median_rate(alone))}/s with the fake at {_cpus(alone, 'fake'):.2f} CPUs and the "
            f"provider's process at {alone_busy:.2f}."
        )
    if "sqlite-1" in trials:
        sq = trials["sqlite-1"]
        out.append(
            f"- SQLite: {_ratio(_median_rate(sq), _median_rate(noop))} of PostgreSQL with the machine only "
            f"{_cpus(sq, 'busy'):.2f} CPUs busy: CPU is not the limit; the finish transactions wait for "
            "SQLite's single writer lock, one at a time."
        )
    return out


def render(results: Results, args: argparse.Namespace, pg_version: str, pg_settings: str) -> str:
    trials, labels = results.trials, results.labels
    noop = _median_rate(trials["noop-1"])
    lines = [
        "# Push bridge throughput",
        "",
        f"`{' '.join(['.venv/bin/python', '-m', 'bench.push', *sys.argv[1:]])}`",
        "",
        f"Real `PushWorker.run_once` loops (batch_size {args.batch_size}, concurrency {args.concurrency}) "
        f"draining N seeded due jobs; database pool {args.pool_size} (+{args.pool_size} overflow) as "
        "shipped; fakes in child processes on loopback. Median of "
        f"{args.rounds} rounds, trial order rotating per round"
        + (", after a warm-up pass at 2% size" if args.warmup else "")
        + f". Wall time {results.wall_s:.0f} s.",
        "",
        *machine_info(pg_version, pg_settings, results),
        "",
        "## 1. Pushes per second through the worker (PostgreSQL, one worker)",
        "",
        "| path | jobs | pushes/s | vs no-op worker | per round | provider send ms (mean) | "
        "finish txn ms (p50) | DB connects per 100 jobs | claim txns, share of wall "
        "| verified (every round) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in ("apns", "fcm", "noop-1"):
        ts = trials[key]
        send = [t.send_ms for t in ts]
        lines.append(
            f"| {labels[key]} | {ts[0].jobs:,} | **{_rate(_median_rate(ts))}** "
            f"| {_ratio(_median_rate(ts), noop)} "
            f"| {_per_round(ts)} | {_ms(send)} | {_ms([t.finish_ms for t in ts])} | {_connects(ts)} "
            f"| {ts[0].claims} claims, {_claim_share(ts)} | {_verified(ts)} |"
        )
    for key in ("apns-alone", "fcm-alone"):
        ts = trials[key]
        lines.append(
            f"| {labels[key]} (concurrency {args.concurrency}) | {ts[0].jobs:,} | {_rate(_median_rate(ts))} "
            f"| {_ratio(_median_rate(ts), noop)} | {_per_round(ts)} | - | - | - | - | {_verified(ts)} |"
        )
    apns, fcm = _median_rate(trials["apns"]), _median_rate(trials["fcm"])
    lines += [
        "",
        f"Through the worker, APNs reaches {_ratio(apns, _median_rate(trials['apns-alone']))} "
        "of the APNs provider "
        f"alone and FCM {_ratio(fcm, _median_rate(trials['fcm-alone']))} of the FCM provider alone. "
        f"APNs tokens minted over the whole run: {results.extra.get('apns_tokens_minted')}; "
        f"FCM access tokens fetched: {results.extra.get('fcm_tokens_fetched')}.",
        "",
        "Verification, last round: "
        + "; ".join(f"{key}: {trials[key][-1].note}" for key in ("apns", "fcm", "noop-1")),
        "",
        f"## 2. Outbox claim throughput (no-op provider, batch {args.batch_size})",
        "",
        "Each worker has its own `claim_id`; ratios are against the one-worker PostgreSQL trial above "
        "(a worker alone in its own process measures the same thing).",
        "",
        "| database | workers | layout | jobs | jobs/s | vs 1 worker | per round | finish txn ms (p50) "
        "| DB connects per 100 jobs | claim txns, share of wall per worker | sends per device "
        "| verified (every round) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    rows: list[tuple[str, str, str, str]] = [("noop-1", "PostgreSQL", "1", "in one process")]
    more = [c for c in args.workers if c > 1]
    rows += [(f"noop-{c}", "PostgreSQL", str(c), "in one process (one bridge, one pool)") for c in more]
    rows += [(f"proc-{c}", "PostgreSQL", str(c), "one process per worker (own bridge + pool)") for c in more]
    rows += [("sqlite-1", "SQLite", "1", "in one process")]
    for key, database, count, layout in rows:
        if key not in trials:
            continue
        ts = trials[key]
        most = "exactly 1" if all(t.ok for t in ts) else "see notes"
        lines.append(
            f"| {database} | {count} | {layout} | {ts[0].jobs:,} | **{_rate(_median_rate(ts))}** "
            f"| {_ratio(_median_rate(ts), noop)} | {_per_round(ts)} | {_ms([t.finish_ms for t in ts])} "
            f"| {_connects(ts)} | {ts[0].claims} claims, {_claim_share(ts)} | {most} | {_verified(ts)} |"
        )
    multi = [key for key in trials if key.startswith("proc-")]
    if multi:
        lines += [
            "",
            "Worker processes, last round: " + "; ".join(f"{k}: {trials[k][-1].note}" for k in multi),
        ]
    abl = [key for key in ABLATIONS if key in trials]
    if abl:
        lines += [
            "",
            "## 3. Ablations of the no-op worker (PostgreSQL, one worker; NOT the shipped configuration)",
            "",
            "Each changes one setting of the engine `pingpull.db.engine.create_engine` builds.",
            "",
            "| change | jobs | jobs/s | vs no-op worker as shipped | per round | finish txn ms (p50) "
            "| DB connects per 100 jobs | verified |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for key in abl:
            ts = trials[key]
            lines.append(
                f"| {labels[key]} | {ts[0].jobs:,} | {_rate(_median_rate(ts))} "
                f"| {_ratio(_median_rate(ts), noop)} "
                f"| {_per_round(ts)} | {_ms([t.finish_ms for t in ts])} | {_connects(ts)} | {_verified(ts)} |"
            )
    lines += ["", *reading(results, args), ""]
    lines += [
        "",
        "## Where the CPU goes",
        "",
        "CPUs busy on average during the drains (CPU-seconds / wall-seconds, all rounds pooled; this "
        "machine has 2). \"trio\" is the bench process's trio thread (worker, policy, providers' trio side, "
        'the no-op provider); "bridge" its asyncio thread (uvloop: SQLAlchemy + asyncpg/aiosqlite, '
        'aioapns + h2); "threads" its other threads (FCM\'s requests/pyfcm workers); "others" is CPU used by '
        "processes outside the benchmark.",
        "",
        "| scenario | trio | bridge | threads | worker procs | postgres | fake | others | machine busy "
        "| CPU µs/push: bench process / postgres / fake |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, ts in trials.items():
        cells = " | ".join(
            f"{_cpus(ts, k):.2f}"
            for k in ("trio", "bridge", "threads", "children", "postgres", "fake", "others", "busy")
        )
        per = " / ".join(
            f"{_us_per_push(ts, keys):.0f}"
            for keys in (("trio", "bridge", "threads", "children"), ("postgres",), ("fake",))
        )
        lines.append(f"| {labels.get(key, key)} | {cells} | {per} |")
    lines += ["", "Trial order per round: " + " | ".join(", ".join(order) for order in results.order), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------


def _int_list(value: str) -> list[int]:
    numbers = sorted({int(part) for part in value.split(",") if part.strip()})
    if not numbers or numbers[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return numbers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=5000, help="jobs per APNs and one-worker no-op trial (5000)"
    )
    parser.add_argument("--fcm-jobs", type=int, default=2000, help="jobs per FCM trial (2000)")
    parser.add_argument(
        "--claim-jobs", type=int, default=3000, help="jobs per multi-worker, SQLite and ablation trial (3000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every trial (3)")
    parser.add_argument("--workers", type=_int_list, default=[1, 2, 4], help="worker counts (1,2,4)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64, help="WorkerSettings.concurrency (64)")
    parser.add_argument("--pool-size", type=int, default=10, help="database pool size (10, as shipped)")
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    parser.add_argument(
        "--no-processes", dest="processes", action="store_false", help="skip worker processes"
    )
    parser.add_argument("--no-sqlite", dest="sqlite", action="store_false")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--output", default=str(RESULTS), help="report file ('-': stdout only)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if 1 not in args.workers:
        args.workers = [1, *args.workers]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child == "fake-apns":
        trio.run(_fake_apns_child, Path(args.child_args[0]))
        return
    if args.child == "fake-fcm":
        trio.run(_fake_fcm_child, Path(args.child_args[0]))
        return
    if args.child == "worker":
        trio.run(_worker_child, args.child_args[0], args)
        return

    started = time.perf_counter()
    name = f"pingpull_bench_push_{uuid.uuid4().hex[:10]}"
    base = args.pg_dsn.rsplit("/", 1)[0]
    pg_url = base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    pg_version = pg_query(args.pg_dsn, "SHOW server_version")
    pg_settings = ", ".join(
        f"{setting} {pg_query(args.pg_dsn, f'SHOW {setting}')}"
        for setting in ("synchronous_commit", "fsync", "shared_buffers")
    )
    pg_admin(args.pg_dsn, f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp_name:
            tmp = Path(tmp_name)
            migrate.upgrade(pg_url)
            sqlite_url = None
            if args.sqlite:
                sqlite_url = f"sqlite+aiosqlite:///{tmp / 'push.sqlite3'}"
                migrate.upgrade(sqlite_url)
            tls = tmp / "tls"
            tls.mkdir()
            log_path = tmp / "children.log"
            try:
                with log_path.open("ab") as log:
                    results = trio.run(measure, args, pg_url, sqlite_url, tls, log)
            except BaseException:
                sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
                raise
    finally:
        pg_admin(args.pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    results.wall_s = time.perf_counter() - started
    report = render(results, args, pg_version, pg_settings)
    print(report)
    if args.output != "-":
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(report)
    if any(not t.ok for ts in results.trials.values() for t in ts):
        raise SystemExit("some trials failed their checks")


if __name__ == "__main__":
    main()
