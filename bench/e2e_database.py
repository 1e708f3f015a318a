"""The database side of `pingpull bench e2e`: the limit, the counters, the scratch database.

The limit runs in a child process (`python -m bench.e2e_database`, a JSON line in, one out): the same
units of database work pingpull does per message (`content_svc.messaging.send_message`,
`pull_inbox`, `ack` inside pingpull's own transaction wrapper `Database._in_transaction` and engine
settings), driven by N workers on native asyncio (uvloop, asyncpg through SQLAlchemy; no trio, no
bridge, no HTTP, no signal), each doing send -> pull -> ack per message for its own k recipients.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final, cast

import trio

from bench.protocols.common import (
    BenchError,
    Json,
    machine_busy_s,
    machine_interrupts_s,
    run_cli,
    self_cpu_s,
)

BODY: Final = "a chat message of an ordinary length, eighty characters or so, nothing more to it."


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


_SESSIONS_SQL: Final = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"


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


if __name__ == "__main__":
    limit_worker()
