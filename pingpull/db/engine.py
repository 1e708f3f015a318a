"""The engine factory and the one door from trio code into the database.

SQLAlchemy's AsyncEngine (asyncpg, aiosqlite) runs on asyncio, so every unit of database work is an
asyncio coroutine `fn(conn, *args)` handed over the bridge in ONE crossing: the transaction, its
retries and the connection checkout all happen on the asyncio side. Service code never holds an
AsyncConnection across trio code, which keeps the bridge cost at one round trip per unit of work.

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
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from pingpull.aio import AsyncioBridge

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("pingpull.db")

_READ_ONLY = "pingpull_read_only"
# PostgreSQL SQLSTATEs that mean "nothing happened, run the transaction again".
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
MAX_ATTEMPTS = 5

Work = Callable[Concatenate[AsyncConnection, P], Coroutine[Any, Any, T]]


def create_engine(
    url: str, *, pool_size: int = 10, pool_timeout_s: float = 10.0, echo: bool = False
) -> AsyncEngine:
    """An AsyncEngine for `sqlite+aiosqlite` or `postgresql+asyncpg`, tuned for pingpull's workload."""
    if url.startswith("sqlite"):
        _ensure_sqlite_parent(url)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        _install_sqlite_hooks(engine)
        return engine
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout_s,
        pool_pre_ping=True,
    )


def _ensure_sqlite_parent(url: str) -> None:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path.split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
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

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def is_retryable(exc: BaseException) -> bool:
    """True for errors after which the whole transaction may simply run again."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if sqlstate in _RETRYABLE_SQLSTATES:
            return True
        if isinstance(exc, OperationalError) and "database is locked" in str(exc.orig):
            return True
    return False


class Database:
    """Runs units of database work on the asyncio side of the bridge."""

    def __init__(self, engine: AsyncEngine, bridge: AsyncioBridge) -> None:
        self.engine = engine
        self.bridge = bridge

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def transaction(self, work: Work[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `work(conn, ...)` in a write transaction, retrying on deadlock or serialization failure."""
        return await self.bridge.run(self._in_transaction, work, False, args, kwargs)

    async def read(self, work: Work[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `work(conn, ...)` in a read transaction (deferred on SQLite, so it runs beside writers)."""
        return await self.bridge.run(self._in_transaction, work, True, args, kwargs)

    async def _in_transaction(
        self,
        work: Callable[..., Coroutine[Any, Any, T]],
        read_only: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        # Runs on the asyncio side.
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.engine.connect() as conn:
                    if read_only:
                        conn = await conn.execution_options(**{_READ_ONLY: True})
                    async with conn.begin():
                        return await work(conn, *args, **kwargs)
            except DBAPIError as exc:
                if attempt == MAX_ATTEMPTS or not is_retryable(exc):
                    raise
                log.info(
                    "retrying transaction %s after %s (attempt %d)",
                    work.__name__,
                    type(exc).__name__,
                    attempt,
                )
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    async def dispose(self) -> None:
        await self.bridge.run(self.engine.dispose)


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
