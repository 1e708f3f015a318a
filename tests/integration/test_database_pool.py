"""The database door under load: a bounded pool that never churns, and "unavailable" instead of 500.

On both backends: no more than `pool_size` connections are ever opened (SQLite: no more worker
threads either), a burst far wider than the pool waits its turn instead of opening throwaway
connections, a checkout that waits longer than `pool_timeout_s` and a server that refuses
connections both raise `DatabaseUnavailable` (which the content service answers with 503 +
Retry-After), and the send transaction stamps `sent_at_ms` only once it holds its locks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from content_svc import messaging
from content_svc.context import wall_clock_ms
from pingpull.aio import AsyncioBridge
from pingpull.db.engine import Database, DatabaseUnavailable, open_database
from pingpull.db.schema import devices, messages, push_jobs, users
from pingpull.tokens import ensure_keys
from push_bridge.providers.base import Outcome, PushOutcome, PushProvider, PushRequest
from push_bridge.worker import PushWorker, WorkerSettings
from tests.support.live import live_content, settings_for_test
from tests.support.services import pg_admin

POOL = 3
BURST = 60


class PoolWatch:
    """Counts connections opened and the most checked out at once, from the pool's own events."""

    def __init__(self, database: Database) -> None:
        self.connects = 0
        self.out = 0
        self.most_out = 0
        sync = database.units_engine
        event.listen(sync, "connect", self._connect)
        event.listen(sync, "checkout", self._checkout)
        event.listen(sync, "checkin", self._checkin)

    def _connect(self, *_args: Any) -> None:
        self.connects += 1

    def _checkout(self, *_args: Any) -> None:
        self.out += 1
        self.most_out = max(self.most_out, self.out)

    def _checkin(self, *_args: Any) -> None:
        self.out -= 1


async def _slow_read(conn: AsyncConnection) -> int:
    # Holds the connection like a real unit of work waiting on I/O: on SQLite the unit runs in a worker
    # thread of its own (pingpull/db/sqlite_units.py), on PostgreSQL on the asyncio side of the bridge.
    if conn.dialect.name == "sqlite":
        time.sleep(0.01)  # noqa: ASYNC251 - a SQLite unit runs in a worker thread
    else:
        await asyncio.sleep(0.01)
    return int((await conn.execute(text("SELECT 1"))).scalar_one())


async def test_a_burst_wider_than_the_pool_never_opens_more_connections(
    database_url: str, bridge: AsyncioBridge
) -> None:
    threads_before = threading.active_count()
    most_threads = threads_before
    async with open_database(database_url, bridge, pool_size=POOL) as database:
        watch = PoolWatch(database)
        most_in_use = 0
        for _round in range(3):  # a pool that closes its overflow between bursts reopens it here
            done = 0

            async def one() -> None:
                nonlocal done, most_in_use, most_threads
                most_in_use = max(most_in_use, database.connections_in_use)
                assert await database.read(_slow_read) == 1
                most_threads = max(most_threads, threading.active_count())
                done += 1

            async with trio.open_nursery() as nursery:
                for _ in range(BURST):
                    nursery.start_soon(one)
            assert done == BURST
            await trio.sleep(0.05)
    assert 1 <= watch.connects <= POOL
    assert watch.most_out <= POOL
    assert most_in_use <= POOL
    # SQLite units run in worker threads, at most one per connection; asyncpg none. Bounded by the pool.
    assert most_threads - threads_before <= POOL


class CountingProvider(PushProvider):
    name = "counting"

    def __init__(self) -> None:
        self.sent: list[PushRequest] = []

    async def send(self, request: PushRequest) -> PushOutcome:
        self.sent.append(request)
        await trio.sleep(0.005)
        return PushOutcome(Outcome.DELIVERED)


async def _seed_due_jobs(conn: AsyncConnection, count: int) -> None:
    user_id = (
        await conn.execute(
            insert(users).values(handle="many", inbox_head=1, created_at_ms=0).returning(users.c.id)
        )
    ).scalar_one()
    rows = [
        {
            "user_id": user_id,
            "name": "",
            "push_provider": "fcm",
            "push_token": f"t{i:08d}",
            "created_at_ms": 0,
        }
        for i in range(count)
    ]
    ids = (await conn.execute(insert(devices).returning(devices.c.id), rows)).scalars().all()
    jobs = [
        {"device_id": d, "user_id": user_id, "seq": 1, "not_before_ms": 0, "attempts": 0, "created_at_ms": 0}
        for d in ids
    ]
    await conn.execute(insert(push_jobs), jobs)


async def _jobs_left(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(push_jobs))).scalar_one())


async def test_the_push_workers_wide_batches_do_not_churn_the_pool(
    database_url: str, bridge: AsyncioBridge
) -> None:
    """A batch of 100 jobs at concurrency 64, each finished in its own transaction: with the pool
    honoured they queue for POOL connections instead of opening (and closing) more."""
    async with open_database(database_url, bridge, pool_size=POOL) as database:
        await database.transaction(_seed_due_jobs, 100)
        watch = PoolWatch(database)
        provider = CountingProvider()
        worker = PushWorker(database, {"fcm": provider}, WorkerSettings(batch_size=100, concurrency=64))
        assert await worker.run_once() == 100
        assert len(provider.sent) == 100
        assert await database.read(_jobs_left) == 0
    assert watch.most_out <= POOL
    assert watch.connects <= POOL


async def _hold(conn: AsyncConnection, release: asyncio.Event | threading.Event) -> None:
    """Keep the connection until released (SQLite units block their worker thread; PostgreSQL units
    wait on the asyncio side)."""
    await conn.execute(text("SELECT 1"))
    if isinstance(release, threading.Event):
        release.wait(30)
    else:
        await release.wait()


async def _new_release(database: Database) -> asyncio.Event | threading.Event:
    if database.dialect == "sqlite":
        return threading.Event()
    return await database.bridge.run(_new_event)


async def _let_go(database: Database, release: asyncio.Event | threading.Event) -> None:
    if isinstance(release, threading.Event):
        release.set()
    else:
        await database.bridge.run(_set, release)


async def test_a_checkout_that_waits_too_long_is_unavailable(
    database_url: str, bridge: AsyncioBridge
) -> None:
    async with open_database(database_url, bridge, pool_size=1, pool_timeout_s=0.3) as database:
        release = await _new_release(database)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(database.read, _hold, release)
            await trio.sleep(0.1)
            started = trio.current_time()
            with pytest.raises(DatabaseUnavailable) as caught:
                await database.read(_slow_read)
            waited = trio.current_time() - started
            await _let_go(database, release)
        assert 0.25 <= waited < 3
        assert caught.value.retry_after_s >= 1
        assert "busy" in str(caught.value)
        assert await database.read(_slow_read) == 1  # and the pool works again


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


async def _set(flag: asyncio.Event) -> None:
    flag.set()


async def test_a_server_that_refuses_connections_is_unavailable(bridge: AsyncioBridge) -> None:
    async with open_database(
        "postgresql+asyncpg://postgres@127.0.0.1:1/nothing", bridge, pool_size=1
    ) as database:
        with pytest.raises(DatabaseUnavailable) as caught:
            await database.read(_slow_read)
    assert isinstance(caught.value.__cause__, OSError)


@pytest.fixture
def limited_role_url(postgres_url: str) -> Any:
    """The test database through a role allowed no connection at all: "too many connections"."""
    role = f"pp_limited_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    yield postgres_url.replace("postgres@", f"{role}@", 1)
    pg_admin(f'DROP ROLE IF EXISTS "{role}"')


async def test_too_many_clients_is_unavailable(limited_role_url: str, bridge: AsyncioBridge) -> None:
    async with open_database(limited_role_url, bridge, pool_size=1) as database:
        with pytest.raises(DatabaseUnavailable) as caught:
            await database.read(_slow_read)
    assert "too many connections" in str(caught.value)
    assert getattr(getattr(caught.value.__cause__, "orig", None), "sqlstate", None) == "53300"


async def test_the_content_service_answers_503_when_the_pool_is_exhausted(
    database_url: str, tmp_path: Path
) -> None:
    import httpx

    ensure_keys(tmp_path / "keys")
    settings = settings_for_test(database_url, tmp_path)
    settings = dataclasses.replace(
        settings, database=dataclasses.replace(settings.database, pool_size=1, pool_timeout_s=0.3)
    )
    async with live_content(settings) as live:
        alice, _ = await live.account("alice")
        database = live.kernel.database
        assert database is not None
        release = await _new_release(database)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(database.read, _hold, release)
            await trio.sleep(0.1)
            response = await live.http.get("/v1/inbox", headers={"Authorization": f"Bearer {alice.token}"})
            await _let_go(database, release)
        assert isinstance(response, httpx.Response)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["Retry-After"]) >= 1


# --- sent_at_ms is stamped once the transaction holds its locks ----------------------------------


async def test_sent_at_is_stamped_after_waiting_for_the_recipients_lock(
    database_url: str, tmp_path: Path
) -> None:
    ensure_keys(tmp_path / "keys")
    async with live_content(settings_for_test(database_url, tmp_path)) as live:
        alice, a = await live.account("alice")
        _, b = await live.account("bob")
        conversation = await alice.create_conversation([b["user_id"]])
        database = live.kernel.database
        assert database is not None
        locked, release, released_at_ms = trio.Event(), trio.Event(), [0]

        async def hold_postgres_row() -> None:
            import asyncpg  # type: ignore[import-untyped]

            other = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
            async with other.transaction():
                await other.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", b["user_id"])
                trio.from_thread.run_sync(locked.set)
                trio.from_thread.run(release.wait)  # blocks this thread's own loop meanwhile: fine
                released_at_ms[0] = wall_clock_ms()
            await other.close()

        def hold_lock() -> None:
            # Another writer holds bob's row (PostgreSQL) or the write lock (SQLite) for a while.
            if not database_url.startswith("sqlite"):
                asyncio.run(hold_postgres_row())
                return
            other = sqlite3.connect(database_url.split(":///", 1)[1], isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            trio.from_thread.run_sync(locked.set)
            trio.from_thread.run(release.wait)
            released_at_ms[0] = wall_clock_ms()
            other.execute("COMMIT")
            other.close()

        result: list[messaging.SendResult] = []

        async def send() -> None:
            result.append(
                await database.transaction(
                    messaging.send_message,
                    sender_id=a["user_id"],
                    sender_device_id=a["device_id"],
                    conversation_id=conversation["id"],
                    idempotency_key="late",
                    body="stamped when it can commit",
                    media=[],
                    ack_grace_ms=0,
                    clock_ms=wall_clock_ms,
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, hold_lock)
            await locked.wait()
            asked_at_ms = wall_clock_ms()
            nursery.start_soon(send)
            await trio.sleep(0.4)
            assert not result  # still waiting for the lock
            release.set()
        sent_at = result[0].message.sent_at_ms
        assert sent_at >= released_at_ms[0] >= asked_at_ms + 300
        assert await database.read(_stored_sent_at, result[0].message.id) == sent_at
        assert await database.read(_head_of, b["user_id"]) == 1


async def _stored_sent_at(conn: AsyncConnection, message_id: int) -> int:
    return int(
        (await conn.execute(select(messages.c.sent_at_ms).where(messages.c.id == message_id))).scalar_one()
    )


async def _head_of(conn: AsyncConnection, user_id: int) -> int:
    return int((await conn.execute(select(users.c.inbox_head).where(users.c.id == user_id))).scalar_one())


# --- a connection the server closed is replaced, the work retried ---------------------------------


async def test_work_survives_the_server_closing_every_pooled_connection(
    postgres_url: str, bridge: AsyncioBridge
) -> None:
    """What pool_pre_ping used to do (at three round trips per checkout): after a restart or an idle
    timeout has closed the pooled connections, the next unit of work runs on a new connection."""
    async with open_database(postgres_url, bridge, pool_size=2) as database:
        watch = PoolWatch(database)

        async def both() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(database.read, _slow_read)

        await both()
        assert watch.connects == 2
        name = postgres_url.rsplit("/", 1)[1]
        pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        assert await database.read(_slow_read) == 1
        assert await database.transaction(_slow_read) == 1
        await both()
        assert 3 <= watch.connects <= 4  # the two dead ones replaced, nothing else


# --- SQLite: one writer at a time, queued in the process, reads beside it ---------------------------


async def test_sqlite_writers_queue_in_the_process_and_reads_run_beside_them(
    tmp_path: Path, sqlite_template: Any, bridge: AsyncioBridge
) -> None:
    """Writers that wait inside SQLite (busy_timeout) sleep and poll while holding a connection; the
    door queues this process's writers instead, so at most one write transaction holds a connection
    and reads are never stuck behind sleeping writers."""
    url = sqlite_template.fresh_copy(tmp_path)
    inside, most_inside = 0, 0

    async def write(conn: AsyncConnection) -> None:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        await conn.execute(text("UPDATE users SET inbox_head = inbox_head WHERE id = 0"))
        time.sleep(0.005)  # noqa: ASYNC251 - SQLite units run in a worker thread each
        inside -= 1

    async with open_database(url, bridge, pool_size=POOL) as database:
        release = await _new_release(database)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(database.transaction, _hold, release)  # a long write transaction
            await trio.sleep(0.1)
            for _ in range(20):
                nursery.start_soon(database.transaction, write)
            with trio.fail_after(2):  # a read is not stuck behind the queued writers
                assert await database.read(_slow_read) == 1
            await _let_go(database, release)
    assert most_inside == 1


class FlakyDatabase(Database):
    """The first `failures` transactions find the database unavailable."""

    def __init__(self, inner: Database, failures: int) -> None:
        super().__init__(inner.engine, inner.bridge)
        self.failures = failures

    async def transaction(self, work: Any, /, *args: Any, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise DatabaseUnavailable("no database connection within 30 s: all 3 stayed busy")
        return await super().transaction(work, *args, **kwargs)


async def test_the_push_worker_outlives_an_unavailable_database(
    database_url: str, bridge: AsyncioBridge
) -> None:
    """In `pingpull serve` the worker shares the process: an exception out of its loop would end the
    whole server (seen in the protocol lab when a claim waited past pool_timeout_s)."""
    async with open_database(database_url, bridge, pool_size=POOL) as database:
        await database.transaction(_seed_due_jobs, 10)
        flaky = FlakyDatabase(database, failures=2)
        provider = CountingProvider()
        worker = PushWorker(flaky, {"fcm": provider}, WorkerSettings(poll_interval_s=0.05))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(10):
                while await database.read(_jobs_left):  # noqa: ASYNC110 - polling the table
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert len(provider.sent) == 10
        assert flaky.failures == 0
