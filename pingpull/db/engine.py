"""The engine factory and the one door from trio code into the database.

SQLAlchemy's AsyncEngine (asyncpg, aiosqlite) runs on asyncio, so every unit of database work is an
asyncio coroutine `fn(conn, *args)` handed over the bridge in ONE crossing: the transaction, its
retries and the connection checkout all happen on the asyncio side. Service code never holds an
AsyncConnection across trio code, which keeps the bridge cost at one round trip per unit of work.

Connections: at most `pool_size` per process, opened once and kept (no overflow). A pool that may
open extra connections under load closes them again as soon as the load dips, so a busy process
opens and closes PostgreSQL sessions all the time (a backend fork and a handshake each: measured
at ~1.5x the cost per push job, bench/results/push.md). Instead, units of work beyond `pool_size`
wait their turn on the trio side (a FIFO `trio.CapacityLimiter` as wide as the pool), where waiting
costs nothing on the asyncio thread, for at most `pool_timeout_s`. The same bound holds for SQLite,
where every connection is a thread of aiosqlite's; there the process's writers queue one at a time
for a connection of their own and reads share the others (SQLite has one writer at a time anyway).

When the database cannot take the work (no connection within `pool_timeout_s`, the server refuses
connections: "too many clients", starting up, unreachable; or contention outlasted the retries),
`DatabaseUnavailable` is raised: callers answer 503 with Retry-After, not 500.

SQLite needs care to behave under concurrent writers: WAL, a busy timeout, foreign keys, and
`BEGIN IMMEDIATE` for write transactions (a deferred transaction that later upgrades to a write lock
fails with SQLITE_BUSY instead of waiting). Reads use a plain deferred `BEGIN`, which WAL lets run
beside a writer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from pingpull.aio import AsyncioBridge
from pingpull.db import sqlite_units
from pingpull.errors import PingpullError

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("pingpull.db")

_READ_ONLY = "pingpull_read_only"
# PostgreSQL SQLSTATEs that mean "nothing happened, run the transaction again".
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# PostgreSQL SQLSTATEs that mean "the server cannot take this now": too many connections (53300),
# out of resources (53000), starting up or shutting down (57P03, 57P01, 57P02), connection failures
# (08000-08006).
_UNAVAILABLE_SQLSTATES = frozenset(
    {"53000", "53300", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"}
)
MAX_ATTEMPTS = 5
# What a client is told to wait before retrying when the database is unavailable.
RETRY_AFTER_S = 1

Work = Callable[Concatenate[AsyncConnection, P], Coroutine[Any, Any, T]]


class DatabaseUnavailable(PingpullError):
    """The database cannot take this unit of work now; nothing was committed. Retry later (503)."""

    def __init__(self, detail: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


def create_engine(
    url: str, *, pool_size: int = 10, pool_timeout_s: float = 10.0, echo: bool = False
) -> AsyncEngine:
    """An AsyncEngine for `sqlite+aiosqlite` or `postgresql+asyncpg`, tuned for pingpull's workload.

    At most `pool_size` connections, kept open (`max_overflow=0`): never more connections, and none
    opened and closed under load."""
    pool = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout_s}
    if url.startswith("sqlite"):
        _ensure_sqlite_parent(url)
        memory = ":memory:" in url or "mode=memory" in url or url.rstrip("/").endswith("sqlite+aiosqlite:")
        # An in-memory database lives in its one connection (SQLAlchemy's StaticPool): nothing to size.
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30}, **({} if memory else pool))
        _install_sqlite_hooks(engine.sync_engine)
        return engine
    # No pool_pre_ping: it costs three round trips per checkout with asyncpg; a connection found dead
    # is replaced and the work retried instead (`Database._in_transaction`).
    return create_async_engine(url, echo=echo, **pool)


def _ensure_sqlite_parent(url: str) -> None:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path.split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module so our BEGIN is the one that runs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=30000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _sqlstate(exc: DBAPIError) -> str | None:
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return sqlstate if isinstance(sqlstate, str) else None


def is_retryable(exc: BaseException) -> bool:
    """True for errors after which the whole transaction may simply run again."""
    if isinstance(exc, DBAPIError):
        if _sqlstate(exc) in _RETRYABLE_SQLSTATES:
            return True
        if isinstance(exc, OperationalError) and "database is locked" in str(exc.orig):
            return True
    return False


def retry_delay_s(attempt: int) -> float:
    """How long to wait before running a unit of work again after its `attempt`-th failure
    (full jitter, doubling)."""
    return random.uniform(0, 0.005 * 2**attempt)


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that say the server cannot take work now (refused, full, going away)."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or _sqlstate(exc) in _UNAVAILABLE_SQLSTATES
    return isinstance(exc, PoolTimeout)


def pool_size_of(engine: AsyncEngine) -> int | None:
    """How many connections the engine's pool holds at most; None when it is not a sized pool."""
    pool = engine.pool
    if isinstance(pool, QueuePool) and pool._max_overflow == 0:  # no public accessor
        return pool.size()
    return None


class Database:
    """Runs units of database work on the asyncio side of the bridge, at most pool-size at once."""

    def __init__(self, engine: AsyncEngine, bridge: AsyncioBridge) -> None:
        self.engine = engine
        self.bridge = bridge
        size = pool_size_of(engine)
        self.pool_size = size
        # SQLite has one writer at a time. Writers that wait inside SQLite (BEGIN IMMEDIATE under
        # busy_timeout) sleep in growing steps and poll, holding a connection each: under load the lock
        # is free while they sleep and reads queue behind them. This process's writers queue here
        # instead, in order, on a connection of their own; reads share the rest of the pool. Neither
        # queue waits behind the other.
        sqlite_split = engine.dialect.name == "sqlite" and size is not None and size >= 2
        self._writer = trio.Lock() if sqlite_split else None
        # Work beyond the pool waits here, in FIFO order, instead of on the asyncio side.
        slots = size - 1 if sqlite_split and size is not None else size
        self._slots = trio.CapacityLimiter(slots) if slots is not None else None
        pool = engine.pool
        self._checkout_timeout_s = pool.timeout() if isinstance(pool, QueuePool) else 30.0
        # Reads on PostgreSQL run without BEGIN/COMMIT (two round trips fewer): at READ COMMITTED every
        # statement takes its own snapshot whether or not it is inside a transaction block, and a read
        # takes no locks, so nothing changes but the cost. SQLite reads keep their deferred BEGIN.
        self._read_options: dict[str, Any] = {_READ_ONLY: True}
        if engine.dialect.name == "postgresql":
            self._read_options["isolation_level"] = "AUTOCOMMIT"
        # SQLite files: whole units in one worker thread on the blocking driver (sqlite_units.py).
        self._sqlite: Engine | None = None
        if engine.dialect.name == "sqlite" and size is not None:
            self._sqlite = sqlite_units.sync_sqlite_engine(
                engine.url.render_as_string(hide_password=False),
                pool_size=size,
                pool_timeout_s=self._checkout_timeout_s,
                echo=bool(engine.echo),
            )
            _install_sqlite_hooks(self._sqlite)
        # Units hold a slot (reads) or the writer lock before they get here: as many threads as
        # connections, apart from trio's shared default limiter.
        self._sqlite_threads = trio.CapacityLimiter(size or 1)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def units_engine(self) -> Engine:
        """The engine whose pool serves units of work (SQLite files: the blocking twin)."""
        return self._sqlite if self._sqlite is not None else self.engine.sync_engine

    @property
    def connections_in_use(self) -> int:
        """Units of work holding (or about to take) a pooled connection now."""
        writing = 1 if self._writer is not None and self._writer.locked() else 0
        return writing + (int(self._slots.borrowed_tokens) if self._slots is not None else 0)

    async def transaction(self, work: Work[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `work(conn, ...)` in a write transaction, retrying on deadlock or serialization failure."""
        return await self._run(work, False, args, kwargs)

    async def read(self, work: Work[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `work(conn, ...)` in a read transaction (deferred on SQLite, so it runs beside writers)."""
        return await self._run(work, True, args, kwargs)

    async def _run(
        self,
        work: Callable[..., Coroutine[Any, Any, T]],
        read_only: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        writer = None if read_only else self._writer
        slots = self._slots if writer is None else None  # SQLite writers have their own connection
        if slots is None and writer is None:
            return await self._unit(work, read_only, args, kwargs)
        have_writer = have_slot = False
        try:
            with trio.move_on_after(self._checkout_timeout_s):
                if writer is not None:
                    await writer.acquire()
                    have_writer = True
                if slots is not None:
                    await slots.acquire()
                    have_slot = True
            if (writer is not None and not have_writer) or (slots is not None and not have_slot):
                raise DatabaseUnavailable(
                    f"no database connection within {self._checkout_timeout_s:g} s: all "
                    f"{self.pool_size} stayed busy"
                )
            return await self._unit(work, read_only, args, kwargs)
        finally:
            if have_slot:
                assert slots is not None
                slots.release()
            if have_writer:
                assert writer is not None
                writer.release()

    async def _unit(
        self,
        work: Callable[..., Coroutine[Any, Any, T]],
        read_only: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        sqlite = self._sqlite
        if sqlite is None:
            return await self.bridge.run(self._in_transaction, work, read_only, args, kwargs)
        try:
            return await trio.to_thread.run_sync(
                lambda: sqlite_units.run_unit(
                    sqlite,
                    work,
                    self._read_options if read_only else None,
                    args,
                    kwargs,
                    max_attempts=MAX_ATTEMPTS,
                    is_retryable=is_retryable,
                    retry_delay_s=retry_delay_s,
                ),
                limiter=self._sqlite_threads,
            )
        except DBAPIError as exc:
            if is_retryable(exc):
                raise DatabaseUnavailable(
                    f"the database stayed busy for {MAX_ATTEMPTS} attempts: {_short(exc)}"
                ) from exc
            if is_unavailable(exc):
                raise DatabaseUnavailable(f"the database connection failed: {_short(exc)}") from exc
            raise
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"no database connection: {_short(exc)}") from exc

    async def _in_transaction(
        self,
        work: Callable[..., Coroutine[Any, Any, T]],
        read_only: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        # Runs on the asyncio side.
        for attempt in range(1, MAX_ATTEMPTS + 1):
            conn = await self._connect()
            committing = False
            try:
                if read_only:
                    await conn.execution_options(**self._read_options)  # in place
                async with conn.begin():
                    result = await work(conn, *args, **kwargs)
                    committing = True  # leaving the block commits
                return result
            except DBAPIError as exc:
                if exc.connection_invalidated and not committing and attempt < MAX_ATTEMPTS:
                    # A pooled connection the server had closed (a restart, an idle timeout): nothing
                    # was committed, so run the work again on a new connection. SQLAlchemy has
                    # invalidated every connection as old as this one. This replaces pool_pre_ping,
                    # which cost three round trips (BEGIN, ";", ROLLBACK) per checkout.
                    log.info("retrying transaction %s on a new connection: %s", work.__name__, _short(exc))
                    continue
                if is_unavailable(exc):
                    raise DatabaseUnavailable(f"the database connection failed: {_short(exc)}") from exc
                if not is_retryable(exc):
                    raise
                if attempt == MAX_ATTEMPTS:
                    raise DatabaseUnavailable(
                        f"the database stayed busy for {MAX_ATTEMPTS} attempts: {_short(exc)}"
                    ) from exc
                log.info(
                    "retrying transaction %s after %s (attempt %d)",
                    work.__name__,
                    type(exc).__name__,
                    attempt,
                )
                await asyncio.sleep(retry_delay_s(attempt))
            finally:
                await conn.close()
        raise AssertionError("unreachable")

    async def _connect(self) -> AsyncConnection:
        """A pooled connection; a refusal or a checkout timeout becomes `DatabaseUnavailable`."""
        conn = self.engine.connect()
        try:
            await conn.start()
        except DBAPIError as exc:
            raise DatabaseUnavailable(f"the database refused a connection: {_short(exc)}") from exc
        except (OSError, TimeoutError, PoolTimeout) as exc:
            raise DatabaseUnavailable(f"no database connection: {_short(exc)}") from exc
        return conn

    async def dispose(self) -> None:
        if self._sqlite is not None:
            await trio.to_thread.run_sync(self._sqlite.dispose)
        await self.bridge.run(self.engine.dispose)


def _short(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}".rstrip(": ")


@asynccontextmanager
async def open_database(
    url: str, bridge: AsyncioBridge, *, pool_size: int = 10, pool_timeout_s: float = 10.0, echo: bool = False
) -> AsyncIterator[Database]:
    engine = create_engine(url, pool_size=pool_size, pool_timeout_s=pool_timeout_s, echo=echo)
    database = Database(engine, bridge)
    try:
        yield database
    finally:
        with trio.CancelScope(shield=True):
            await database.dispose()
