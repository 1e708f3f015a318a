"""bench.push's measuring and set-up: CPU from /proc, the timed and counted database, the outbox.

`CpuProbe` reads CPU per thread of this process, per process of the fakes and workers, of every
``postgres`` process (plus what the postmaster reaped) and of the machine. `TimedDatabase` and
`count_connects` time the units and count new connections; `prepare` truncates and seeds the outbox.
"""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped]
import trio
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from pingpull.db.engine import Database
from pingpull.db.schema import devices, push_jobs, users
from push_bridge import store

T = TypeVar("T")
TICK: Final = os.sysconf("SC_CLK_TCK")

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


async def native_id() -> int:
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
    if conn.dialect.name != "sqlite":  # SQLite units run to completion in a thread (decision 0004)
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


async def left_in_outbox(conn: AsyncConnection) -> tuple[int, int]:
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
