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
   setting each against what `pingpull.db.engine.create_engine` builds (``pool_size`` connections,
   no overflow, no pre-ping): ``max_overflow = pool_size`` (the pool before session 2, which closes
   its overflow connections whenever the load dips, at every batch tail, and reopens them for the
   next batch), ``pool_pre_ping`` on, ``synchronous_commit=off`` for the session.

Trials run in rounds, the order rotating per round; rates are the median over rounds. CPU is read
from /proc per thread (trio thread, the bridge's asyncio thread, other threads), per process (the
fakes, worker processes, every ``postgres`` process) and for the whole machine, so the "others"
column is CPU used meanwhile by processes outside this benchmark. PostgreSQL's CPU includes what the
postmaster reaped from backends that exited (closed connections), and any other database's backends
(the server is shared); new connections are counted with a pool "connect" event.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Final, ParamSpec, TypeVar

import trio
import trio.lowlevel
from sqlalchemy.ext.asyncio import create_async_engine

from bench.push_report import ABLATIONS, render
from bench.push_setup import (
    CpuProbe,
    TimedDatabase,
    connects,
    count_connects,
    left_in_outbox,
    native_id,
    pg_admin,
    pg_query,
    prepare,
    warm,
)
from pingpull.aio import AsyncioBridge, open_asyncio_bridge
from pingpull.db import migrate
from pingpull.db.engine import Database, open_database
from push_bridge import payloads
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

Json = dict[str, Any]


def apns_token(i: int) -> str:
    return f"{i:064x}"


def fcm_token(i: int) -> str:
    return f"fcm-{i:08d}-" + "x" * 140


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
        left = await database.read(left_in_outbox)
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
        left = await self.pg.read(left_in_outbox)
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
        probe = CpuProbe(threading.get_native_id(), await bridge.run(native_id))
        bench = Bench(args, bridge, pg, probe)
        if sqlite_url:
            bench.sqlite = count_connects(await stack.enter_async_context(open_database(sqlite_url, bridge)))
        if args.ablations:
            # Each changes one thing of what pingpull.db.engine.create_engine builds.
            shipped: Json = {"pool_size": args.pool_size, "max_overflow": 0, "pool_timeout": 10}
            variants: list[Json] = [
                {"max_overflow": args.pool_size},
                {"pool_pre_ping": True},
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
