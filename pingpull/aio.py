"""The one bridge from trio to asyncio-only libraries.

asyncpg (through SQLAlchemy's AsyncEngine), aiosqlite, redis.asyncio and aioapns only run on an
asyncio event loop. Service code reaches them through an `AsyncioBridge` and nothing else::

    async with open_asyncio_bridge() as bridge:
        rows = await bridge.run(fetch_inbox, engine, user_id, after)  # fetch_inbox is asyncio code

Cross the bridge once per unit of work (a whole transaction, a whole pipeline), not once per
statement: every crossing costs a hop between event loops.

Two implementations, same contract:

`ThreadLoopBridge` (``kind="thread"``, the default)
    A daemon thread runs its own event loop (uvloop when importable, else the stdlib loop). `run`
    parks the trio task in `trio.lowlevel.wait_task_rescheduled` (its abort_fn asks the loop to
    cancel the asyncio task and returns ``Abort.FAILED``, so the real outcome is still awaited).
    Calls go over in batches: the trio side appends to a FIFO and, unless a flush is already
    pending, schedules one with ``loop.call_soon_threadsafe``; the asyncio task's done callback
    does the same in the other direction with ``TrioToken.run_sync_soon``, and that flush calls
    `trio.lowlevel.reschedule` for each finished call. At most two thread wake-ups per call, fewer
    under load; no per-call trio task, no memory channel, no lock. `run` must be called from the
    trio thread that opened the bridge; contextvars do not cross; objects bound to the loop are
    created and used only through `run`.

`TrioAsyncioBridge` (``kind="trio_asyncio"``)
    trio-asyncio's loop runs asyncio callbacks inside trio's own scheduler, and every asyncio
    reader/writer becomes a trio task waiting on the fd. Nothing crosses threads, but every asyncpg
    round trip pays for trio-asyncio's emulation.

The default is picked by ``python -m bench.bridge`` (bench/results/bridge.md has the run, and
docs/decisions/0001-asyncio-bridge.md the decision). 2 vCPU AMD EPYC VM, PostgreSQL 15 on loopback,
SQLAlchemy 2.1 AsyncEngine + asyncpg 0.32, medians of 5 interleaved rounds, ratios against native
asyncio measured in the same run::

                           c1 p50 µs (× native)              c20 on a pool of 10, ops/s (× native)
                           native  thread       trio-asyncio  native  thread        trio-asyncio
    send transaction        1,098  1,152 1.05×  1,493 1.36×    1,939  2,016 1.04×   1,000 0.52×
    inbox pull (50 rows)      459    532 1.16×    740 1.61×    4,100  3,509 0.86×   1,684 0.41×
    SELECT 1                  291    350 1.20×    492 1.69×    6,238  5,696 0.91×   2,073 0.33×
    bare crossing, no I/O       -     61 µs        29 µs           -  149,171/s     39,927/s

A bare crossing is cheaper under trio-asyncio (no thread wake-ups), but every asyncpg round trip
then runs through trio-asyncio's emulated selector: real queries come out 1.4-1.7× slower and at a
third to a half of the throughput. The thread bridge pays ~60 µs per crossing (two thread wake-ups
on this VM), which is why callers cross once per unit of work, and keeps 0.86-1.04× of native
throughput. Handing calls over in batches doubled its bare-crossing throughput (71k/s with one wake-up
per call).

Contract of `AsyncioBridge.run`:

* ``fn(*args, **kwargs)`` is called *on the asyncio side* (so code that looks up the running loop
  finds the bridge's loop) and runs there as an `asyncio.Task`.
* Its return value is returned, its exception is raised unchanged (the same object).
* Cancelling the trio caller cancels the asyncio task and *waits for it to finish* before raising
  `trio.Cancelled`: a database connection is back in its pool, never abandoned mid-transaction.
  If the task finishes anyway (it swallowed the cancellation, or had already finished), its real
  outcome is reported and trio raises `Cancelled` at the caller's next checkpoint.
* A caller already cancelled when it calls `run` gets `trio.Cancelled` and nothing is submitted.
* Used after close, or shut down under a waiting caller: `pingpull.errors.BridgeError`.

The exception-handler trap: trio-asyncio's default loop exception handler re-raises any exception
reported by an asyncio callback (a failing ``call_soon`` callback, a task whose exception was never
retrieved, aioapns' background readers) into the nursery that hosts the loop, which tears the whole
loop down and every caller with it. Both bridges install `_log_loop_exception` instead: the
exception is logged on the ``pingpull.aio`` logger and the loop keeps running.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, Final, Literal, NoReturn, ParamSpec, TypeVar

import outcome
import trio

from pingpull.errors import BridgeError

__all__ = [
    "DEFAULT_KIND",
    "AsyncioBridge",
    "BridgeKind",
    "ThreadLoopBridge",
    "TrioAsyncioBridge",
    "open_asyncio_bridge",
    "open_thread_loop_bridge",
    "open_trio_asyncio_bridge",
]

P = ParamSpec("P")
T = TypeVar("T")

BridgeKind = Literal["thread", "trio_asyncio"]
DEFAULT_KIND: Final[BridgeKind] = "thread"  # chosen by bench/bridge.py; see the module docstring

logger = logging.getLogger("pingpull.aio")

_CLOSED_MESSAGE: Final = "the asyncio bridge is closed"
_SHUT_DOWN_MESSAGE: Final = "the asyncio bridge was shut down while this call was running"


def _log_loop_exception(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Loop exception handler: log on ``pingpull.aio``, never raise, never stop the loop."""
    message = context.get("message") or "Unhandled exception in an asyncio callback"
    exc = context.get("exception")
    exc_info = exc if isinstance(exc, BaseException) else None
    try:
        details = "".join(
            f"; {key}={value!r}" for key, value in context.items() if key not in ("message", "exception")
        )
        logger.error("asyncio: %s%s", message, details, exc_info=exc_info)
    except Exception:
        # A repr() that raises must not turn into a second exception in the loop: under trio-asyncio
        # a handler that raises falls back to the default handler, which tears the loop down.
        with suppress(Exception):
            logger.error("asyncio: %s", message, exc_info=exc_info)


class AsyncioBridge(abc.ABC):
    """Runs asyncio coroutines on an asyncio loop on behalf of trio callers."""

    @abc.abstractmethod
    async def run(self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` as an asyncio task and return (or raise) its outcome.

        Trio cancellation cancels the asyncio task and waits for it to finish before raising
        `trio.Cancelled`. Raises `BridgeError` once the bridge is closed.
        """

    @property
    @abc.abstractmethod
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop the calls run on (create loop-bound asyncio objects there, via `run`)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once the bridge has started shutting down; `run` then raises `BridgeError`."""


# --------------------------------------------------------------------------------------------------
# (b) a dedicated asyncio loop in a daemon thread


class _ThreadCall:
    """One `ThreadLoopBridge.run` in flight. Methods are annotated with the thread they run on."""

    __slots__ = (
        "aio_task",
        "args",
        "cancel_requested",
        "fn",
        "kwargs",
        "raise_cancel",
        "trio_task",
    )

    def __init__(
        self,
        trio_task: trio.lowlevel.Task,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.trio_task = trio_task
        self.fn: Callable[..., Coroutine[Any, Any, Any]] | None = fn
        self.args = args
        self.kwargs = kwargs
        self.aio_task: asyncio.Task[Any] | None = None
        self.cancel_requested = False
        self.raise_cancel: Callable[[], NoReturn] | None = None


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    # Not asyncio.new_event_loop(): once trio-asyncio is imported, that refuses to run in a trio thread.
    return asyncio.SelectorEventLoop()


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task still on the (stopped) loop and run it until they have all finished."""
    while tasks := asyncio.all_tasks(loop):
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())


class ThreadLoopBridge(AsyncioBridge):
    """An asyncio (uvloop) loop in a daemon thread; outcomes handed back through the trio token.

    Open it with `open_thread_loop_bridge` or `open_asyncio_bridge`. `run` must be called from the
    trio run that opened the bridge.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self._loop = loop
        self._token = token
        self._closed = False
        self._finished = trio.Event()
        self._submitted: deque[_ThreadCall] = deque()  # trio -> asyncio
        self._submit_scheduled = False
        self._completed: deque[tuple[trio.lowlevel.Task, outcome.Outcome[Any]]] = deque()  # asyncio -> trio
        self._complete_scheduled = False
        self._thread = threading.Thread(target=self._thread_main, name="pingpull-asyncio", daemon=True)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise BridgeError(_CLOSED_MESSAGE)
        call = _ThreadCall(trio.lowlevel.current_task(), fn, args, kwargs)
        self._submitted.append(call)
        if not self._submit_scheduled:
            self._submit_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._start_submitted)
            except RuntimeError as exc:  # the loop thread died and closed its loop
                raise BridgeError(_CLOSED_MESSAGE) from exc

        def abort(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
            call.raise_cancel = raise_cancel
            # RuntimeError: the loop is closed, so the drain at shutdown has settled the task.
            with suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._cancel, call)
            return trio.lowlevel.Abort.FAILED  # keep waiting for the task's real outcome

        try:
            result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        except asyncio.CancelledError as exc:
            if call.raise_cancel is not None:
                call.raise_cancel()  # trio.Cancelled (or KeyboardInterrupt), chained to exc
            if self._closed:
                raise BridgeError(_SHUT_DOWN_MESSAGE) from exc
            raise
        return result

    # Handing over in batches: each direction has a FIFO and a "flush scheduled" flag. The producer
    # appends, then schedules a flush only if none is pending; the consumer clears the flag *before*
    # draining. Under load, one thread wake-up moves many calls (trio's run_sync_soon costs a socket
    # write per call; the stdlib loop's call_soon_threadsafe likewise).

    # asyncio thread
    def _start_submitted(self) -> None:
        self._submit_scheduled = False
        pop, loop = self._submitted.popleft, self._loop
        while self._submitted:
            call = pop()
            fn, call.fn = call.fn, None
            if call.cancel_requested or fn is None:
                self._deliver(call, outcome.Error(asyncio.CancelledError()))
                continue
            try:
                task = loop.create_task(fn(*call.args, **call.kwargs))
            except BaseException as exc:  # fn is not a coroutine function, or failed to create one
                self._deliver(call, outcome.Error(exc))
                continue
            call.aio_task = task
            task.add_done_callback(partial(self._done, call))

    # asyncio thread
    def _done(self, call: _ThreadCall, task: asyncio.Task[Any]) -> None:
        self._deliver(call, outcome.capture(task.result))

    # asyncio thread
    def _deliver(self, call: _ThreadCall, result: outcome.Outcome[Any]) -> None:
        self._completed.append((call.trio_task, result))
        if not self._complete_scheduled:
            self._complete_scheduled = True
            with suppress(trio.RunFinishedError):  # nobody left to tell
                self._token.run_sync_soon(self._reschedule_completed)

    # trio thread
    def _reschedule_completed(self) -> None:
        self._complete_scheduled = False
        pop, reschedule = self._completed.popleft, trio.lowlevel.reschedule
        while self._completed:
            reschedule(*pop())

    # asyncio thread: the trio caller was cancelled while parked
    def _cancel(self, call: _ThreadCall) -> None:
        call.cancel_requested = True
        if call.aio_task is not None:
            call.aio_task.cancel()

    def _start(self) -> None:
        self._thread.start()

    # loop thread
    def _thread_main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        except BaseException:  # SystemExit / KeyboardInterrupt escaped a callback or a task
            logger.critical("asyncio bridge loop died; the bridge is closed", exc_info=True)
            self._closed = True
            self._quiesce_trio_side()
        finally:
            try:
                _drain(loop)
            except BaseException:
                logger.exception("asyncio bridge: error while draining the loop")
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                with suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(self._finished.set)

    # loop thread
    def _quiesce_trio_side(self) -> None:
        """Round trip through the trio thread after setting `_closed`.

        `run` checks `_closed` and submits without a checkpoint in between, so once a callback has
        run on the trio thread, every submission that slipped in before the flag is already queued
        on this loop and the drain will see it.
        """
        barrier = threading.Event()
        try:
            self._token.run_sync_soon(barrier.set)
        except trio.RunFinishedError:
            return
        barrier.wait()

    async def aclose(self) -> None:
        """Stop accepting calls, cancel what is left on the loop, wait for it, join the thread."""
        self._closed = True
        if self._thread.ident is None:  # never started
            self._loop.close()
            return
        with suppress(RuntimeError):  # already closed by a dead loop thread
            self._loop.call_soon_threadsafe(self._loop.stop)
        with trio.CancelScope(shield=True):
            await self._finished.wait()
        self._thread.join()


@asynccontextmanager
async def open_thread_loop_bridge(*, use_uvloop: bool = True) -> AsyncIterator[ThreadLoopBridge]:
    """Start a loop thread (uvloop when importable and ``use_uvloop``); stop and join it on exit."""
    loop = _new_loop(use_uvloop)
    loop.set_exception_handler(_log_loop_exception)
    bridge = ThreadLoopBridge(loop, trio.lowlevel.current_trio_token())
    try:
        bridge._start()
        yield bridge
    finally:
        await bridge.aclose()


# --------------------------------------------------------------------------------------------------
# (a) trio-asyncio


async def _invoke(
    fn: Callable[..., Coroutine[Any, Any, T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    return await fn(*args, **kwargs)


class TrioAsyncioBridge(AsyncioBridge):
    """trio-asyncio's loop, running inside the trio scheduler. Open it with `open_trio_asyncio_bridge`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop: Any = loop  # a trio_asyncio.TrioEventLoop (untyped package)
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop = self._loop
        return loop

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise BridgeError(_CLOSED_MESSAGE)
        # What `trio_asyncio.aio_as_trio(fn, loop=loop)(*args, **kwargs)` does, minus the wrapper
        # object: `fn` is called inside the asyncio task, and trio-asyncio's run_aio_future cancels
        # the task on trio cancellation and waits for its outcome (Abort.FAILED) before raising.
        try:
            result: T = await self._loop.run_aio_coroutine(_invoke(fn, args, kwargs))
        except asyncio.CancelledError as exc:
            if self._closed:  # open_loop's exit cancelled every task still running
                raise BridgeError(_SHUT_DOWN_MESSAGE) from exc
            raise
        return result


@asynccontextmanager
async def open_trio_asyncio_bridge() -> AsyncIterator[TrioAsyncioBridge]:
    """Open a trio-asyncio loop with a logging exception handler; close it on exit."""
    import trio_asyncio  # imported here: importing it patches asyncio's loop lookups process-wide

    async with trio_asyncio.open_loop() as loop:
        # Without this, the first exception reported by any asyncio callback tears the loop down.
        loop.set_exception_handler(_log_loop_exception)
        bridge = TrioAsyncioBridge(loop)
        try:
            yield bridge
        finally:
            bridge._closed = True


# --------------------------------------------------------------------------------------------------


@asynccontextmanager
async def open_asyncio_bridge(kind: BridgeKind = DEFAULT_KIND) -> AsyncIterator[AsyncioBridge]:
    """Open the bridge services use. ``kind`` defaults to the one bench/bridge.py measured fastest
    (``"thread"``: see the module docstring and docs/decisions/0001-asyncio-bridge.md)."""
    if kind == "thread":
        async with open_thread_loop_bridge() as thread_bridge:
            yield thread_bridge
    elif kind == "trio_asyncio":
        async with open_trio_asyncio_bridge() as trio_asyncio_bridge:
            yield trio_asyncio_bridge
    else:
        raise BridgeError(f"unknown asyncio bridge kind {kind!r}")
