"""SQLite units of work run whole in one worker thread, on the stdlib `sqlite3` driver.

Through SQLAlchemy's aiosqlite dialect a unit of work crosses threads about ten times: trio to the
asyncio bridge, then, for every statement, aiosqlite's own thread for the cursor, the execute, the
fetch and the cursor's close, and once more for the COMMIT and the pool's reset. Each crossing is a
queue hand-off, a wake-up and a GIL hand-over. An empty inbox pull cost 1.6 ms of CPU that way, most
of a short poll's cost and the reason the protocol lab's short-polling phase saturated the server.

Here the same unit (`async def work(conn, ...)`, written against `AsyncConnection`) runs in one
`trio.to_thread.run_sync` call on a synchronous engine: its coroutine is driven to completion with a
single `send(None)`, because the connection it gets answers `await conn.execute(...)` at once, from
the blocking driver, without ever suspending. Two thread crossings per unit instead of about ten.
A unit that awaits anything else (it would need an event loop) is a programming error and fails
loudly. PostgreSQL keeps the asyncio path: asyncpg round trips are network round trips anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")


class ImmediateConnection:
    """What a unit of work sees of its connection: `await conn.execute(...)`, answered at once."""

    __slots__ = ("sync_connection",)

    def __init__(self, sync_connection: Connection) -> None:
        self.sync_connection = sync_connection

    async def execute(
        self,
        statement: Any,
        parameters: Any = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> Any:
        return self.sync_connection.execute(statement, parameters, execution_options=execution_options)

    @property
    def dialect(self) -> Any:
        return self.sync_connection.dialect


class UnitAwaitedSomethingElse(RuntimeError):
    """A unit of work awaited something other than its connection (it needs an event loop)."""


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, in this thread."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise UnitAwaitedSomethingElse(
        f"{getattr(coroutine, '__qualname__', coroutine)} awaited something other than its connection"
    )


def sync_sqlite_engine(async_url: str, *, pool_size: int, pool_timeout_s: float, echo: bool) -> Engine:
    """The blocking twin of the aiosqlite engine: same file, same pool bounds, usable from any thread."""
    url = make_url(async_url).set(drivername="sqlite+pysqlite")
    return create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout_s,
        # trio's worker threads come and go; a pooled connection is used by one thread at a time.
        connect_args={"timeout": 30, "check_same_thread": False},
    )


def run_unit(
    engine: Engine,
    work: Callable[..., Coroutine[Any, Any, T]],
    read_options: Mapping[str, Any] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    max_attempts: int,
    is_retryable: Callable[[BaseException], bool],
    retry_delay_s: Callable[[int], float],
) -> T:
    """One unit of work in a transaction (read or write per `read_options`), retried while SQLite
    reports the database locked. Runs in a worker thread; blocking is what it is for."""
    for attempt in range(1, max_attempts + 1):
        try:
            with engine.connect() as conn:
                if read_options is not None:
                    conn.execution_options(**read_options)
                with conn.begin():
                    return drive(work(ImmediateConnection(conn), *args, **kwargs))
        except DBAPIError as exc:
            if not is_retryable(exc) or attempt == max_attempts:
                raise
            time.sleep(retry_delay_s(attempt))
    raise AssertionError("unreachable")
