"""SQLite units of work run whole in one worker thread (pingpull/db/sqlite_units.py)."""

from __future__ import annotations

import functools
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError

from pingpull.aio import open_asyncio_bridge
from pingpull.db import sqlite_units
from pingpull.db.engine import (
    DatabaseUnavailable,
    _install_sqlite_hooks,
    is_retryable,
    open_database,
    retry_delay_s,
)


def test_a_coroutine_that_never_suspends_is_driven_to_its_value() -> None:
    async def answer() -> int:
        return 42

    assert sqlite_units.drive(answer()) == 42


def test_a_unit_that_awaits_an_event_loop_fails_loudly() -> None:
    async def sleeps() -> None:
        await trio.lowlevel.checkpoint()

    with pytest.raises(sqlite_units.UnitAwaitedSomethingElse, match="sleeps"):
        sqlite_units.drive(sleeps())


def _engine(tmp_path: Path) -> Any:
    engine = sqlite_units.sync_sqlite_engine(
        f"sqlite+aiosqlite:///{tmp_path}/units.sqlite3", pool_size=2, pool_timeout_s=5, echo=False
    )
    _install_sqlite_hooks(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    return engine


async def _insert(conn: Any, value: int) -> int:
    await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
    return int((await conn.execute(text("SELECT count(*) FROM t"))).scalar_one())


async def _fails_after_insert(conn: Any) -> None:
    await conn.execute(text("INSERT INTO t (v) VALUES (7)"))
    raise ValueError("changed my mind")


def test_a_unit_commits_or_leaves_nothing(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    run = functools.partial(sqlite_units.run_unit, retry_delay_s=retry_delay_s)
    assert run(engine, _insert, None, (1,), {}, max_attempts=3, is_retryable=is_retryable) == 1
    with pytest.raises(ValueError):
        run(engine, _fails_after_insert, None, (), {}, max_attempts=3, is_retryable=is_retryable)
    assert run(engine, _insert, None, (2,), {}, max_attempts=3, is_retryable=is_retryable) == 2


def test_a_locked_database_is_retried_until_the_lock_goes(tmp_path: Path) -> None:
    _engine(tmp_path)
    # No busy wait in SQLite: a write while another connection holds the lock fails at once.
    impatient = create_engine(
        f"sqlite+pysqlite:///{tmp_path}/units.sqlite3",
        connect_args={"timeout": 0, "isolation_level": None, "check_same_thread": False},
    )

    @event.listens_for(impatient, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    holder = sqlite3.connect(tmp_path / "units.sqlite3", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    refusals: list[str] = []

    def retryable(exc: BaseException) -> bool:
        refusals.append(str(exc))
        if len(refusals) == 1:
            threading.Timer(0.05, holder.rollback).start()  # let go while the unit backs off
        return is_retryable(exc)

    added = sqlite_units.run_unit(
        impatient,
        _insert,
        None,
        (5,),
        {},
        max_attempts=12,
        is_retryable=retryable,
        retry_delay_s=retry_delay_s,
    )
    assert added == 1
    assert refusals and all("locked" in r for r in refusals)
    holder.close()


async def test_the_database_runs_sqlite_units_off_the_trio_thread_and_busy_means_503(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/db.sqlite3"
    async with open_asyncio_bridge() as bridge, open_database(url, bridge, pool_size=3) as database:
        threads: list[str] = []

        async def create(conn: Any) -> None:
            threads.append(threading.current_thread().name)
            await conn.execute(text("CREATE TABLE t (v INTEGER)"))

        await database.transaction(create)
        assert threads and threads[0] != threading.current_thread().name

        async with trio.open_nursery() as nursery:  # writers one at a time, reads beside them
            for value in range(20):
                nursery.start_soon(database.transaction, _insert, value)
                nursery.start_soon(database.read, _count)
        assert await database.read(_count) == 20

        async def always_locked(conn: Any) -> None:
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))

        with pytest.raises(DatabaseUnavailable, match="stayed busy"):
            await database.transaction(always_locked)


async def _count(conn: Any) -> int:
    return int((await conn.execute(text("SELECT count(*) FROM t"))).scalar_one())
