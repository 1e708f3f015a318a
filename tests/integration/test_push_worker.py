"""The push worker against the real outbox, on SQLite and PostgreSQL, with a scripted provider."""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pingpull.db.schema import devices, push_jobs, users
from pingpull.tokens import ensure_keys
from push_bridge import store
from push_bridge.providers.base import Outcome, PushOutcome, PushProvider, PushRequest
from push_bridge.worker import PushWorker, WorkerSettings
from tests.support.live import LiveContent, live_content, settings_for_test


class Clock:
    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class ScriptedProvider(PushProvider):
    """Our own provider interface, answering from a script: the worker's logic is what is tested."""

    name = "scripted"

    def __init__(self) -> None:
        self.sent: list[PushRequest] = []
        self.script: dict[str, deque[PushOutcome]] = defaultdict(deque)
        # Runs while the push is "in flight", before the answer: what the world does meanwhile.
        self.during_send: Callable[[PushRequest], Awaitable[None]] | None = None

    async def send(self, request: PushRequest) -> PushOutcome:
        self.sent.append(request)
        await trio.lowlevel.checkpoint()
        if self.during_send is not None:
            await self.during_send(request)
        queue = self.script.get(request.token)
        return queue.popleft() if queue else PushOutcome(Outcome.DELIVERED)


@pytest.fixture
def clock(live: LiveContent) -> Clock:
    clock = Clock()
    live.context.clock_ms = clock
    return clock


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


def make_worker(live: LiveContent, provider: ScriptedProvider, clock: Clock, **settings: Any) -> PushWorker:
    assert live.kernel.database is not None
    return PushWorker(
        live.kernel.database,
        {"apns": provider, "fcm": provider},
        WorkerSettings(**settings),
        clock_ms=clock,
        rng=random.Random(7),
    )


async def _pair(live: LiveContent, token: str = "a" * 64) -> tuple[Any, Any, dict[str, Any], int]:
    alice, _ = await live.account("alice")
    bob, b = await live.account("bob")
    await bob.register_push(b["device_id"], "apns", token)
    conversation = await alice.create_conversation([b["user_id"]])
    return alice, bob, b, conversation["id"]


async def _jobs(live: LiveContent) -> list[Any]:
    async def read(conn: AsyncConnection) -> list[Any]:
        return list(await conn.execute(select(push_jobs)))

    assert live.kernel.database is not None
    return await live.kernel.database.read(read)


async def test_offline_device_gets_one_push_for_a_burst(
    live: LiveContent, provider: ScriptedProvider, clock: Clock
) -> None:
    alice, _, b, cid = await _pair(live)
    for i in range(5):
        await alice.send(cid, f"m{i}")
    worker = make_worker(live, provider, clock)
    assert await worker.run_once() == 1
    assert [(r.device_id, r.seq) for r in provider.sent] == [(b["device_id"], 5)]
    assert provider.sent[0].headers["apns-push-type"] == "background"
    assert await _jobs(live) == []
    # More messages while the woken app has not acked: no second push before repush_after_s...
    await alice.send(cid, "m5")
    await worker.run_once()
    assert len(provider.sent) == 1
    clock.advance(worker.settings.repush_after_s + 1)
    await worker.run_once()
    assert [r.seq for r in provider.sent] == [5, 6]


async def test_after_an_ack_the_next_message_may_push_again(
    live: LiveContent, provider: ScriptedProvider, clock: Clock
) -> None:
    alice, bob, _, cid = await _pair(live)
    worker = make_worker(live, provider, clock)
    await alice.send(cid, "one")
    await worker.run_once()
    await bob.ack(1)
    await alice.send(cid, "two")
    await worker.run_once()
    assert [r.seq for r in provider.sent] == [1, 2]


async def test_connected_device_that_acks_is_never_pushed(
    live: LiveContent, provider: ScriptedProvider, clock: Clock
) -> None:
    alice, bob, b, cid = await _pair(live)
    live.kernel.bus.subscribe(b["device_id"], lambda frame: None)  # the device holds a connection
    worker = make_worker(live, provider, clock)
    await alice.send(cid, "hi")
    await worker.run_once()
    assert provider.sent == []  # within the ack grace
    await bob.ack(1)
    clock.advance(live.context.settings.ack_grace_s + 1)
    await worker.run_once()
    assert provider.sent == []
    assert await _jobs(live) == []


async def test_a_ghost_connection_is_pushed_once_after_the_ack_grace(
    live: LiveContent, provider: ScriptedProvider, clock: Clock
) -> None:
    alice, _, b, cid = await _pair(live)
    live.kernel.bus.subscribe(b["device_id"], lambda frame: None)  # "connected", but never acks
    worker = make_worker(live, provider, clock)
    await alice.send(cid, "are you there?")
    await worker.run_once()
    assert provider.sent == []
    clock.advance(live.context.settings.ack_grace_s + 0.5)
    await worker.run_once()
    assert [r.device_id for r in provider.sent] == [b["device_id"]]


async def test_dead_token_is_removed_unless_registered_again(
    live: LiveContent, provider: ScriptedProvider, clock: Clock
) -> None:
    alice, _, b, cid = await _pair(live, token="d" * 64)
    provider.script["d" * 64].append(PushOutcome(Outcome.TOKEN_DEAD, reason="Unregistered", status=410))
    worker = make_worker(live, provider, clock)
    await alice.send(cid, "hi")
    await worker.run_once()

    async def token(conn: AsyncConnection) -> str | None:
        value: str | None = (
            await conn.execute(select(devices.c.push_token).where(devices.c.id == b["device_id"]))
        ).scalar_one()
        return value

    assert live.kernel.database is not None
    assert await live.kernel.database.read(token) is None
    assert await _jobs(live) == []
    assert worker.metrics.tokens_removed.labels("scripted")._value.get() == 1


async def test_a_token_registered_again_while_its_push_was_in_flight_is_kept(
    live: LiveContent, provider: ScriptedProvider, clock: Clock
) -> None:
    # The app reinstalled (or refreshed its token) after the push left: the 410 is about the past.
    token = "e" * 64
    alice, bob, b, cid = await _pair(live, token=token)
    provider.script[token].append(PushOutcome(Outcome.TOKEN_DEAD, reason="Unregistered", status=410))

    async def register_again(request: PushRequest) -> None:
        clock.advance(1)
        await bob.register_push(b["device_id"], "apns", token)

    provider.during_send = register_again
    worker = make_worker(live, provider, clock)
    await alice.send(cid, "hi")
    assert await worker.run_once() == 1

    async def device(conn: AsyncConnection) -> Any:
        return (await conn.execute(select(devices).where(devices.c.id == b["device_id"]))).one()

    assert live.kernel.database is not None
    row = await live.kernel.database.read(device)
    assert row.push_token == token and row.push_registered_at_ms == clock()
    assert await _jobs(live) == []  # the job itself ends
    assert worker.metrics.tokens_removed.labels("scripted")._value.get() == 0


async def test_retry_honours_retry_after_then_delivers(
    live: LiveContent, provider: ScriptedProvider, clock: Clock
) -> None:
    alice, _, _, cid = await _pair(live, token="r" * 64)
    provider.script["r" * 64].extend(
        [
            PushOutcome(Outcome.RETRY, reason="TooManyRequests", status=429, retry_after_s=30),
            PushOutcome(Outcome.RETRY, reason="ServiceUnavailable", status=503),
        ]
    )
    worker = make_worker(live, provider, clock)
    await alice.send(cid, "hi")
    await worker.run_once()
    [job] = await _jobs(live)
    assert job.not_before_ms >= clock() + 30_000 and job.attempts == 1 and job.claim_id is None
    clock.advance(29)
    assert await worker.run_once() == 0  # not before the provider said
    clock.advance(2)
    await worker.run_once()
    [job] = await _jobs(live)
    assert job.attempts == 2
    clock.advance(worker.settings.retry.cap_s + 1)
    await worker.run_once()
    assert await _jobs(live) == []
    assert len(provider.sent) == 3


async def test_a_crashed_workers_claims_expire_and_are_finished_by_another(
    live: LiveContent, provider: ScriptedProvider, clock: Clock
) -> None:
    alice, _, b, cid = await _pair(live)
    await alice.send(cid, "hi")
    assert live.kernel.database is not None
    # A worker claims the job and dies (kill -9) before sending or finishing.
    claimed = await live.kernel.database.transaction(
        store.claim_due, now_ms=clock(), batch=10, claim_ttl_ms=60_000, claim_id="dead-worker"
    )
    assert [j.device_id for j in claimed] == [b["device_id"]]
    survivor = make_worker(live, provider, clock)
    assert await survivor.run_once() == 0  # still claimed
    clock.advance(61)
    assert await survivor.run_once() == 1
    assert len(provider.sent) == 1
    # The dead worker, were it to wake up, can no longer finish what it no longer holds.
    await live.kernel.database.transaction(store.finish_gone, claimed[0])
    assert await _jobs(live) == []


@pytest.fixture
async def live_postgres(postgres_url: str, tmp_path: Path) -> AsyncIterator[LiveContent]:
    """Several workers share a queue on PostgreSQL only (SQLite runs one worker)."""
    ensure_keys(tmp_path / "keys")
    async with live_content(settings_for_test(postgres_url, tmp_path)) as server:
        yield server


async def test_two_workers_share_a_thousand_jobs_without_double_sends(
    live_postgres: LiveContent, provider: ScriptedProvider
) -> None:
    live, clock = live_postgres, Clock()
    assert live.kernel.database is not None
    count = 1000

    async def seed(conn: AsyncConnection) -> None:
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
                for d in ids
            ],
        )

    await live.kernel.database.transaction(seed)
    workers = [make_worker(live, provider, clock, batch_size=50) for _ in range(2)]

    async def drain(worker: PushWorker) -> None:
        while await worker.run_once():
            pass

    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(drain, worker)
    tokens = [r.token for r in provider.sent]
    assert len(tokens) == count
    assert len(set(tokens)) == count

    async def remaining(conn: AsyncConnection) -> int:
        return (await conn.execute(select(func.count()).select_from(push_jobs))).scalar_one()

    assert await live.kernel.database.read(remaining) == 0
