"""Benchmark: the cost of reaching asyncpg (SQLAlchemy AsyncEngine) from trio, per bridge.

Run ``python -m bench.bridge`` (``--help`` for the knobs). In one run, against one PostgreSQL scratch
database, the same query mix goes through

* ``native``: plain ``asyncio.run`` + AsyncEngine(asyncpg), the baseline every ratio is taken against;
* ``trio_asyncio``: trio + `pingpull.aio.TrioAsyncioBridge`;
* ``thread``: trio + `pingpull.aio.ThreadLoopBridge` (uvloop in the loop thread);
* optional references (``--impls all``): ``native_uvloop`` (asyncio on uvloop) and ``thread_stdlib``
  (the thread bridge on the stdlib loop), which separate "what the bridge costs" from "what uvloop
  gives back".

The mix mimics pingpull's hot paths: the send transaction (message + inbox heads + inbox rows + push
outbox upsert, one bridge crossing per transaction), the inbox pull, and a trivial ``SELECT 1``. Each
query is measured at concurrency 1 (latency p50/p99) and at concurrency ``--concurrency`` on a pool of
``--pool-size`` (throughput), for ``--duration`` seconds per cell.
``--queries noop`` measures a bare crossing instead (a coroutine that returns at once, no database):
what a bridge costs by itself.

Every implementation runs in its own process (importing trio-asyncio patches asyncio's loop lookups
process-wide, which must not leak into the baseline). The worker processes stay up and warm for the
whole run; the parent asks them for one cell at a time, so the same cell is measured on every
implementation back to back (in an order that rotates from cell to cell) before moving on, and the
whole sequence is repeated ``--rounds`` times. Drift and noise (checkpoints, autovacuum, the neighbours
of a small VM) are spread over all implementations; the report gives the median over rounds.
On a small VM most of the noise is *between* cells (the same cell lands at ~215 or ~300 µs depending on
where the scheduler puts the processes), so the defaults favour more rounds of shorter cells: 5 rounds
of 1 s per cell, about two minutes for the three default implementations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import trio
from sqlalchemy import TextClause, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench._report import cpu_model
from pingpull.aio import AsyncioBridge, open_thread_loop_bridge, open_trio_asyncio_bridge

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_URL: Final = "postgresql+asyncpg://postgres@127.0.0.1:5432/pingpull_bridge_bench"
DEFAULT_OUTPUT: Final = ROOT / "bench" / "results" / "bridge.md"

IMPLS: Final = ("native", "trio_asyncio", "thread")
EXTRA_IMPLS: Final = ("native_uvloop", "thread_stdlib")
IMPL_LABELS: Final = {
    "native": "native asyncio (baseline)",
    "native_uvloop": "native asyncio on uvloop",
    "trio_asyncio": "trio + trio-asyncio bridge",
    "thread": "trio + thread-loop bridge (uvloop)",
    "thread_stdlib": "trio + thread-loop bridge (stdlib loop)",
}
QUERIES: Final = ("send", "pull", "select1")
ALL_QUERIES: Final = (*QUERIES, "noop")
QUERY_LABELS: Final = {
    "send": "send transaction",
    "pull": "inbox pull (50 rows)",
    "select1": "SELECT 1",
    "noop": "bare crossing (no I/O)",
}

N_USERS: Final = 2000
SEED_MESSAGES_PER_USER: Final = 120
BODY: Final = "b" * 120

# -- schema and queries (asyncio side) ---------------------------------------------------------------

SCHEMA: Final = (
    "DROP TABLE IF EXISTS push_jobs, inbox, messages, users",
    "CREATE TABLE users (id bigint PRIMARY KEY, inbox_head bigint NOT NULL DEFAULT 0)",
    """CREATE TABLE messages (
        id bigserial PRIMARY KEY,
        conversation_id bigint NOT NULL,
        sender_id bigint NOT NULL,
        idempotency_key text NOT NULL,
        body text NOT NULL,
        sent_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (sender_id, idempotency_key))""",
    """CREATE TABLE inbox (
        user_id bigint NOT NULL,
        seq bigint NOT NULL,
        message_id bigint NOT NULL REFERENCES messages (id),
        PRIMARY KEY (user_id, seq))""",
    """CREATE TABLE push_jobs (
        device_id bigint PRIMARY KEY,
        user_id bigint NOT NULL,
        seq bigint NOT NULL,
        not_before timestamptz NOT NULL)""",
    f"INSERT INTO users (id) SELECT g FROM generate_series(1, {N_USERS}) g",
    f"""INSERT INTO messages (conversation_id, sender_id, idempotency_key, body)
        SELECT u, u, 'seed-' || k, repeat('s', 120)
        FROM generate_series(1, {N_USERS}) u, generate_series(1, {SEED_MESSAGES_PER_USER}) k""",
    """INSERT INTO inbox (user_id, seq, message_id)
        SELECT sender_id, row_number() OVER (PARTITION BY sender_id ORDER BY id), id FROM messages""",
    "UPDATE users SET inbox_head = (SELECT count(*) FROM inbox WHERE inbox.user_id = users.id)",
)

INSERT_MESSAGE: Final = text(
    "INSERT INTO messages (conversation_id, sender_id, idempotency_key, body)"
    " VALUES (:conversation_id, :sender_id, :key, :body) RETURNING id"
)
BUMP_HEADS: Final = text(
    "UPDATE users SET inbox_head = inbox_head + 1"
    " WHERE id IN (SELECT id FROM users WHERE id = ANY(:ids) ORDER BY id FOR UPDATE)"
    " RETURNING id, inbox_head"
)
INSERT_INBOX: Final = text(
    "INSERT INTO inbox (user_id, seq, message_id) VALUES (:u1, :s1, :message_id), (:u2, :s2, :message_id)"
)
UPSERT_PUSH: Final = text(
    "INSERT INTO push_jobs (device_id, user_id, seq, not_before)"
    " VALUES (:d1, :user_id, :seq, now() + interval '2 seconds'),"
    " (:d2, :user_id, :seq, now() + interval '2 seconds')"
    " ON CONFLICT (device_id) DO UPDATE"
    " SET seq = GREATEST(push_jobs.seq, EXCLUDED.seq), not_before = EXCLUDED.not_before"
)
PULL: Final = text(
    "SELECT i.seq, m.id, m.conversation_id, m.sender_id, m.body, m.sent_at"
    " FROM inbox i JOIN messages m ON m.id = i.message_id"
    " WHERE i.user_id = :user_id AND i.seq > :after ORDER BY i.seq LIMIT 50"
)
SELECT_1: Final[TextClause] = text("SELECT 1")


async def op_send(engine: AsyncEngine, params: dict[str, Any]) -> None:
    """The send transaction: message, both inbox heads (locked in id order), inbox rows, push outbox."""
    sender, recipient = params["sender"], params["recipient"]
    async with engine.begin() as conn:
        message_id = (
            await conn.execute(
                INSERT_MESSAGE,
                {
                    "conversation_id": params["conversation_id"],
                    "sender_id": sender,
                    "key": params["key"],
                    "body": BODY,
                },
            )
        ).scalar_one()
        bumped = await conn.execute(BUMP_HEADS, {"ids": [sender, recipient]})
        heads: dict[int, int] = {user_id: head for user_id, head in bumped.all()}
        await conn.execute(
            INSERT_INBOX,
            {
                "u1": sender,
                "s1": heads[sender],
                "u2": recipient,
                "s2": heads[recipient],
                "message_id": message_id,
            },
        )
        await conn.execute(
            UPSERT_PUSH,
            {"d1": recipient * 2, "d2": recipient * 2 + 1, "user_id": recipient, "seq": heads[recipient]},
        )


async def op_pull(engine: AsyncEngine, params: dict[str, Any]) -> None:
    async with engine.connect() as conn:
        rows = (await conn.execute(PULL, params)).all()
    assert len(rows) == 50, len(rows)


async def op_select1(engine: AsyncEngine, _params: dict[str, Any]) -> None:
    async with engine.connect() as conn:
        await conn.execute(SELECT_1)


async def op_noop(_engine: AsyncEngine, _params: dict[str, Any]) -> None:
    """No database: what one crossing of the bridge costs by itself."""


Op = Callable[[AsyncEngine, dict[str, Any]], Coroutine[Any, Any, None]]
OPS: Final[dict[str, Op]] = {"send": op_send, "pull": op_pull, "select1": op_select1, "noop": op_noop}


class ParamSource:
    """Arguments for each query, generated on the caller's side (identically for every impl)."""

    def __init__(self, tag: str, seed: int) -> None:
        self._tag = tag
        self._rng = random.Random(seed)
        self._counter = itertools.count()

    def __call__(self, query: str) -> dict[str, Any]:
        rng = self._rng
        if query == "send":
            sender, recipient = rng.sample(range(1, N_USERS + 1), 2)
            low, high = min(sender, recipient), max(sender, recipient)
            return {
                "sender": sender,
                "recipient": recipient,
                "conversation_id": low * 100_000 + high,
                "key": f"{self._tag}-{next(self._counter)}",
            }
        if query == "pull":
            return {"user_id": rng.randint(1, N_USERS), "after": rng.randint(0, SEED_MESSAGES_PER_USER - 50)}
        return {}


async def make_engine(url: str, pool_size: int) -> AsyncEngine:
    """Created on the asyncio side: the pool's connections belong to that loop."""
    return create_async_engine(url, pool_size=pool_size, max_overflow=0)


# -- measurement (worker processes) ------------------------------------------------------------------

MODES: Final = ("c1", "cn")


@dataclass(frozen=True)
class Sample:
    """One cell: one query, one mode, on one implementation, in one round."""

    ops: float
    p50_us: float
    p99_us: float


def _percentile(sorted_ns: Sequence[int], q: float) -> float:
    index = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return sorted_ns[index] / 1000


Call = Callable[[Op, AsyncEngine, dict[str, Any]], Awaitable[None]]
SpawnAll = Callable[[list[Callable[[], Awaitable[None]]]], Awaitable[None]]


class Driver:
    """Measures cells for one implementation; `call` and `spawn_all` hide asyncio vs. trio."""

    def __init__(
        self,
        call: Call,
        spawn_all: SpawnAll,
        engine: AsyncEngine,
        params: ParamSource,
        concurrency: int,
        queries: Sequence[str],
    ) -> None:
        self.call = call
        self.spawn_all = spawn_all
        self.engine = engine
        self.params = params
        self.concurrency = concurrency
        self.queries = queries

    async def _loop(self, query: str, deadline_ns: int, latencies: list[int]) -> None:
        op, params, call, engine = OPS[query], self.params, self.call, self.engine
        perf = time.perf_counter_ns
        while True:
            args = params(query)
            start = perf()
            await call(op, engine, args)
            end = perf()
            latencies.append(end - start)
            if end >= deadline_ns:
                return

    async def cell(self, query: str, mode: str, duration_s: float) -> Sample:
        latencies: list[int] = []
        start = time.perf_counter_ns()
        deadline_ns = start + int(duration_s * 1e9)
        if mode == "c1":
            await self._loop(query, deadline_ns, latencies)
        else:

            def one_worker() -> Awaitable[None]:
                return self._loop(query, deadline_ns, latencies)

            await self.spawn_all([one_worker] * self.concurrency)
        elapsed_s = (time.perf_counter_ns() - start) / 1e9
        latencies.sort()
        return Sample(len(latencies) / elapsed_s, _percentile(latencies, 0.50), _percentile(latencies, 0.99))

    async def serve(
        self, read_line: Callable[[], Awaitable[str]], duration_s: float, warmup_s: float
    ) -> None:
        """Warm up, say ready, then run one cell per ``QUERY MODE`` line on stdin until ``quit``."""
        for query in self.queries:  # fill the pool, the prepared-statement caches, the code paths
            for mode in MODES:
                await self.cell(query, mode, warmup_s)
        print(json.dumps({"ready": True}), flush=True)
        while (line := (await read_line()).strip()) not in ("", "quit"):
            query, mode = line.split()
            await self.cell(query, mode, warmup_s)  # re-warm after idling while the others ran
            print(json.dumps(asdict(await self.cell(query, mode, duration_s))), flush=True)


async def _asyncio_call(op: Op, engine: AsyncEngine, params: dict[str, Any]) -> None:
    await op(engine, params)


async def _asyncio_spawn_all(fns: list[Callable[[], Awaitable[None]]]) -> None:
    await asyncio.gather(*(fn() for fn in fns))


async def _asyncio_read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _native_main(args: argparse.Namespace, params: ParamSource) -> None:
    engine = await make_engine(args.database_url, args.pool_size)
    try:
        driver = Driver(_asyncio_call, _asyncio_spawn_all, engine, params, args.concurrency, args.queries)
        await driver.serve(_asyncio_read_line, args.duration, args.warmup)
    finally:
        await engine.dispose()


async def _trio_spawn_all(fns: list[Callable[[], Awaitable[None]]]) -> None:
    async with trio.open_nursery() as nursery:
        for fn in fns:
            nursery.start_soon(fn)


async def _trio_read_line() -> str:
    return await trio.to_thread.run_sync(sys.stdin.readline)


async def _bridged(bridge: AsyncioBridge, args: argparse.Namespace, params: ParamSource) -> None:
    async def call(op: Op, engine: AsyncEngine, query_params: dict[str, Any]) -> None:
        await bridge.run(op, engine, query_params)

    engine = await bridge.run(make_engine, args.database_url, args.pool_size)
    try:
        driver = Driver(call, _trio_spawn_all, engine, params, args.concurrency, args.queries)
        await driver.serve(_trio_read_line, args.duration, args.warmup)
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(engine.dispose)


async def _trio_main(impl: str, args: argparse.Namespace, params: ParamSource) -> None:
    if impl == "trio_asyncio":
        async with open_trio_asyncio_bridge() as bridge:
            await _bridged(bridge, args, params)
    else:
        async with open_thread_loop_bridge(use_uvloop=impl == "thread") as thread_bridge:
            await _bridged(thread_bridge, args, params)


def run_worker(args: argparse.Namespace) -> None:
    """Child process: one implementation, kept warm, measuring the cells the parent asks for."""
    impl: str = args.worker
    params = ParamSource(f"{impl}-{os.getpid()}", seed=0)
    if impl == "native":
        asyncio.run(_native_main(args, params))
    elif impl == "native_uvloop":
        import uvloop

        uvloop.run(_native_main(args, params))
    else:
        trio.run(_trio_main, impl, args, params)


# -- orchestration (parent process) --------------------------------------------------------------------


async def prepare_database(url: str) -> str:
    """Create the scratch database if needed, (re)create and seed the schema; return the server version."""
    sa_url = make_url(url)
    connect: dict[str, Any] = {
        "host": sa_url.host or "127.0.0.1",
        "port": sa_url.port or 5432,
        "user": sa_url.username or "postgres",
        "password": sa_url.password,
    }
    admin = await asyncpg.connect(database="postgres", **connect)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", sa_url.database)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{sa_url.database}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(database=sa_url.database, **connect)
    try:
        for statement in SCHEMA:
            await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE")
        version: str = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return version


class Worker:
    """Parent-side handle on one worker process."""

    def __init__(self, impl: str, args: argparse.Namespace) -> None:
        self.impl = impl
        command = [sys.executable, "-m", "bench.bridge", "--worker", impl]
        for flag in ("duration", "warmup", "concurrency", "pool_size", "database_url"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        command += ["--queries", ",".join(args.queries)]
        self._proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench worker {self.impl!r} died (exit code {self._proc.wait()})")
        message: dict[str, Any] = json.loads(line)
        return message

    def wait_ready(self) -> None:
        if not self._read().get("ready"):
            raise SystemExit(f"bench worker {self.impl!r} did not start")

    def cell(self, query: str, mode: str) -> Sample:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{query} {mode}\n")
        self._proc.stdin.flush()
        return Sample(**self._read())

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.write("quit\n")
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


Results = dict[str, dict[tuple[str, str], list[Sample]]]


def measure(impls: list[str], args: argparse.Namespace) -> Results:
    """All workers stay up; each cell is measured for every impl back to back, in a rotating order."""
    results: Results = {impl: {(q, m): [] for q in args.queries for m in MODES} for impl in impls}
    workers = {impl: Worker(impl, args) for impl in impls}
    try:
        for worker in workers.values():
            worker.wait_ready()
        cells = [(query, mode) for query in args.queries for mode in MODES]
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for index, (query, mode) in enumerate(cells):
                shift = (round_no + index) % len(impls)
                for impl in impls[shift:] + impls[:shift]:
                    results[impl][query, mode].append(workers[impl].cell(query, mode))
    finally:
        for worker in workers.values():
            worker.close()
    return results


def machine_info(server_version: str) -> list[str]:
    cpu = cpu_model()
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("trio", "trio-asyncio", "SQLAlchemy", "asyncpg", "uvloop")
    )
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} vCPU ({cpu}), {platform.system()} {platform.release()}",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- libraries: {versions}",
        f"- database: PostgreSQL {server_version}, same machine (loopback), default settings "
        "(synchronous_commit on)",
    ]


def _us(value: float) -> str:
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}×" if baseline else "n/a"


def render(results: Results, args: argparse.Namespace, server_version: str, wall_s: float) -> str:
    def median(impl: str, query: str, mode: str, field: str) -> float:
        return float(statistics.median(float(getattr(s, field)) for s in results[impl][query, mode]))

    impls = list(results)
    n = args.concurrency
    command = shlex.join(["python", "-m", "bench.bridge", *sys.argv[1:]])
    lines = [
        "# asyncio bridge benchmark",
        "",
        f"`{command}`: {args.rounds} rounds, {args.duration:g} s per cell, median over rounds. "
        f"Latency at concurrency 1; throughput at concurrency {n} on a pool of {args.pool_size}. "
        f"Wall time {wall_s:.0f} s.",
        "Ratios are against native asyncio measured in the same run: latency ×>1 is slower, "
        "throughput ×<1 is slower.",
        "",
        *machine_info(server_version),
        "",
        f"| query | implementation | c1 p50 µs | c1 p99 µs | c{n} ops/s | c{n} p99 µs "
        "| p50 vs native | p99 vs native | ops/s vs native |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for query in args.queries:
        base_p50 = median("native", query, "c1", "p50_us")
        base_p99 = median("native", query, "c1", "p99_us")
        base_ops = median("native", query, "cn", "ops")
        for impl in impls:
            p50, p99 = median(impl, query, "c1", "p50_us"), median(impl, query, "c1", "p99_us")
            ops, cn_p99 = median(impl, query, "cn", "ops"), median(impl, query, "cn", "p99_us")
            lines.append(
                f"| {QUERY_LABELS[query]} | {IMPL_LABELS[impl]} | {_us(p50)} | {_us(p99)} | {ops:,.0f} "
                f"| {_us(cn_p99)} | {_ratio(p50, base_p50)} | {_ratio(p99, base_p99)} "
                f"| {_ratio(ops, base_ops)} |"
            )
    header = " / ".join(f"r{i + 1}" for i in range(args.rounds))
    lines += [
        "",
        f"Per round, to judge the noise (c1 p50 µs; c{n} ops/s):",
        "",
        f"| query | implementation | c1 p50: {header} | c{n} ops/s: {header} |",
        "|---|---|---:|---:|",
    ]
    for query in args.queries:
        for impl in impls:
            p50s = " / ".join(_us(s.p50_us) for s in results[impl][query, "c1"])
            opss = " / ".join(f"{s.ops:,.0f}" for s in results[impl][query, "cn"])
            lines.append(f"| {QUERY_LABELS[query]} | {IMPL_LABELS[impl]} | {p50s} | {opss} |")
    return "\n".join(lines) + "\n"


def run_parent(args: argparse.Namespace) -> None:
    impls: list[str] = list(IMPLS + EXTRA_IMPLS) if args.impls == "all" else args.impls.split(",")
    unknown = sorted(set(impls) - set(IMPL_LABELS))
    if unknown or "native" not in impls:
        raise SystemExit(f"--impls must include 'native' and only name {sorted(IMPL_LABELS)}; got {unknown}")
    started = time.monotonic()
    server_version = asyncio.run(prepare_database(args.database_url))
    results = measure(impls, args)
    report = render(results, args, server_version, time.monotonic() - started)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report, encoding="utf-8")
        print(f"written to {args.output}", file=sys.stderr)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bridge", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per cell (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (default 5)")
    parser.add_argument("--concurrency", type=int, default=20, help="tasks in throughput cells (default 20)")
    parser.add_argument("--pool-size", type=int, default=10, help="connection pool size (default 10)")
    parser.add_argument("--warmup", type=float, default=0.2, help="untimed seconds before each cell (0.2)")
    parser.add_argument("--database-url", default=DEFAULT_URL, help=f"scratch database ({DEFAULT_URL})")
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help=f"comma-separated subset of {', '.join(IMPL_LABELS)}, or 'all' (default {','.join(IMPLS)})",
    )
    parser.add_argument(
        "--queries",
        default=",".join(QUERIES),
        help=f"comma-separated subset of {', '.join(ALL_QUERIES)} (default {','.join(QUERIES)})",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="report path ('' to skip)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.queries = args.queries.split(",")
    if unknown := sorted(set(args.queries) - set(ALL_QUERIES)):
        parser.error(f"unknown queries {unknown}; choose from {', '.join(ALL_QUERIES)}")
    if args.output is not None and str(args.output) in ("", "."):
        args.output = None
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
