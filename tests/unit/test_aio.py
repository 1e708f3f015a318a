"""The asyncio bridge, both implementations, with plain asyncio coroutines (no database)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator

import pytest
import trio

from pingpull.aio import AsyncioBridge, BridgeKind, open_asyncio_bridge
from pingpull.errors import BridgeError

KINDS: list[BridgeKind] = ["thread", "trio_asyncio"]


@pytest.fixture(params=KINDS)
async def bridge(request: pytest.FixtureRequest) -> AsyncIterator[AsyncioBridge]:
    async with open_asyncio_bridge(request.param) as opened:
        yield opened


class Boom(Exception):
    pass


async def add(a: int, b: int, *, delay: float = 0) -> int:
    await asyncio.sleep(delay)
    return a + b


async def fail(exc: BaseException) -> None:
    await asyncio.sleep(0)
    raise exc


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def test_returns_value(bridge: AsyncioBridge) -> None:
    assert await bridge.run(add, 2, 3) == 5
    assert await bridge.run(add, 2, 3, delay=0.01) == 5


async def test_runs_on_the_bridge_loop(bridge: AsyncioBridge) -> None:
    assert await bridge.run(running_loop) is bridge.loop


async def test_propagates_the_same_exception(bridge: AsyncioBridge) -> None:
    error = Boom("kaput")
    with pytest.raises(Boom, match=r"^kaput$") as caught:
        await bridge.run(fail, error)
    assert caught.value is error


async def test_exception_raised_before_the_first_await(bridge: AsyncioBridge) -> None:
    async def immediately() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        await bridge.run(immediately)


async def test_asyncio_cancelled_error_from_the_callee_propagates(bridge: AsyncioBridge) -> None:
    # The trio caller was not cancelled: an asyncio.CancelledError raised by the callee is its outcome.
    async def cancelled_inside() -> None:
        raise asyncio.CancelledError("from the callee")

    with pytest.raises(asyncio.CancelledError):
        await bridge.run(cancelled_inside)


async def test_many_concurrent_calls(bridge: AsyncioBridge) -> None:
    n = 300
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await bridge.run(add, i, 1000, delay=0.05)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    elapsed = time.monotonic() - started
    assert results == {i: i + 1000 for i in range(n)}
    assert elapsed < 2.0, f"{n} calls of 50 ms each took {elapsed:.2f} s: not concurrent"


async def _schedule_failing_callback() -> None:
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)


async def test_exception_in_an_asyncio_callback_is_logged_and_the_loop_survives(
    bridge: AsyncioBridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pingpull.aio")
    await bridge.run(_schedule_failing_callback)
    # The callback runs on the loop before the next call's task gets to finish.
    assert await bridge.run(add, 1, 1, delay=0.01) == 2
    await trio.sleep(0.05)  # under trio-asyncio's default handler the teardown would happen here
    records = [r for r in caplog.records if r.name == "pingpull.aio"]
    assert len(records) == 1, records
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ZeroDivisionError)
    for i in range(20):
        assert await bridge.run(add, i, 1) == i + 1
    assert not bridge.closed


async def _fail_unobserved() -> None:
    task = asyncio.get_running_loop().create_task(fail(Boom("never awaited")))
    await asyncio.sleep(0.01)
    assert task.done()
    del task
    gc.collect()  # Task.__del__ reports "exception was never retrieved" to the loop's handler


async def test_task_exception_never_retrieved_is_logged_and_the_loop_survives(
    bridge: AsyncioBridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pingpull.aio")
    await bridge.run(_fail_unobserved)
    await trio.sleep(0.05)
    records = [r for r in caplog.records if r.name == "pingpull.aio"]
    assert any(r.exc_info is not None and isinstance(r.exc_info[1], Boom) for r in records), records
    assert await bridge.run(add, 40, 2) == 42


async def test_trio_cancellation_cancels_the_asyncio_task_and_waits_for_it(bridge: AsyncioBridge) -> None:
    seen: list[str] = []

    async def sleeper() -> None:
        try:
            seen.append("started")
            await asyncio.sleep(10)
            seen.append("woke up")  # pragma: no cover - must not happen
        except asyncio.CancelledError:
            seen.append("cancelled")
            await asyncio.sleep(0.05)  # cleanup that takes time (a ROLLBACK, a pool release)
            raise
        finally:
            seen.append("finished")

    started = time.monotonic()
    with trio.move_on_after(0.1) as scope:
        await bridge.run(sleeper)
    elapsed = time.monotonic() - started
    assert scope.cancelled_caught
    # The asyncio side saw the cancellation and finished its cleanup *before* run() raised Cancelled.
    assert seen == ["started", "cancelled", "finished"]
    assert 0.1 <= elapsed < 1.0
    assert await bridge.run(add, 1, 2) == 3


async def test_cancellation_raises_trio_cancelled(bridge: AsyncioBridge) -> None:
    with trio.CancelScope() as scope:
        scope.deadline = trio.current_time() + 0.05
        with pytest.raises(trio.Cancelled):
            await bridge.run(asyncio.sleep, 10)


async def test_already_cancelled_caller_submits_nothing(bridge: AsyncioBridge) -> None:
    ran: list[bool] = []

    async def record() -> None:
        ran.append(True)

    with trio.CancelScope() as scope:
        scope.cancel()
        await bridge.run(record)
    assert scope.cancelled_caught
    await bridge.run(asyncio.sleep, 0.01)
    assert ran == []


async def test_task_that_finishes_despite_cancellation_reports_its_value(bridge: AsyncioBridge) -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "done anyway"
        return "slept"  # pragma: no cover

    with trio.move_on_after(0.05) as scope:
        value = await bridge.run(stubborn)
        assert value == "done anyway"
        await trio.lowlevel.checkpoint()  # the cancellation lands at the next checkpoint
    assert scope.cancelled_caught


@pytest.mark.parametrize("kind", KINDS)
async def test_use_after_close_raises_bridge_error(kind: BridgeKind) -> None:
    async with open_asyncio_bridge(kind) as bridge:
        assert await bridge.run(add, 1, 1) == 2
    assert bridge.closed
    with pytest.raises(BridgeError):
        await bridge.run(add, 1, 1)


@pytest.mark.parametrize("kind", KINDS)
async def test_call_in_flight_when_the_bridge_closes_gets_bridge_error(kind: BridgeKind) -> None:
    outcome: list[BaseException] = []
    aio_side: list[str] = []

    async def long_call() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            aio_side.append("finished")

    async def caller(bridge: AsyncioBridge, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await bridge.run(long_call)
        except BaseException as exc:
            outcome.append(exc)
            raise

    started = time.monotonic()
    with pytest.RaisesGroup(BridgeError):
        async with trio.open_nursery() as nursery, open_asyncio_bridge(kind) as bridge:
            await nursery.start(caller, bridge)
            await trio.sleep(0.05)
    assert time.monotonic() - started < 2.0
    assert aio_side == ["finished"]
    assert len(outcome) == 1
    assert isinstance(outcome[0], BridgeError)


async def test_unknown_kind_is_refused() -> None:
    with pytest.raises(BridgeError):
        async with open_asyncio_bridge("nope"):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_trio_asyncio_default_handler_tears_the_loop_down() -> None:
    """The trap the bridge defends against: without our handler, one bad callback kills the loop."""
    import trio_asyncio

    async def without_a_handler() -> None:
        async with trio_asyncio.open_loop() as loop:
            await loop.run_aio_coroutine(_schedule_failing_callback())
            await trio.sleep(1)  # cancelled by the teardown
            pytest.fail("the trio-asyncio loop survived an exception in a callback")  # pragma: no cover

    with pytest.raises(BaseExceptionGroup) as caught:
        await without_a_handler()
    assert caught.value.subgroup(ZeroDivisionError) is not None


async def test_thread_loop_death_closes_the_bridge_and_fails_callers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SystemExit escaping a callback ends run_forever: in-flight and later calls get BridgeError."""

    def die() -> None:
        raise SystemExit("loop thread killed")

    async def kill_soon() -> None:
        asyncio.get_running_loop().call_later(0.05, die)

    async with open_asyncio_bridge("thread") as bridge:
        await bridge.run(kill_soon)
        with pytest.raises(BridgeError):
            await bridge.run(asyncio.sleep, 10)
        assert bridge.closed
        with pytest.raises(BridgeError):
            await bridge.run(asyncio.sleep, 0)
    assert any(r.levelno == logging.CRITICAL for r in caplog.records if r.name == "pingpull.aio")
