"""The keep-alive timeout of hypercorn's trio connections: one deadline moved per request, not a task.

hypercorn's trio `TCPServer` keeps an idle connection open for `keep_alive_timeout` with a
`TrioSingleTask`: each time a connection turns idle it starts a new task with `nursery.start` (after
taking a lock), and each request cancels it again. That is a task spawned, started, cancelled and
unwound per request, several trips through the scheduler: on an empty inbox pull it was about a
tenth of the request's CPU. And the task does not notice the client leaving: when the peer closes
its end, the connection's nursery waits for the idle task, so the socket sat in CLOSE_WAIT, its
descriptor held, for the whole keep-alive timeout (75 s), on every connection a client closed.

`KeepAliveDeadline` replaces it. One watch task per connection waits for the worker's `terminated`
event inside a cancel scope whose deadline is moved instead: to "idle since + keep-alive" when the
connection turns idle, to infinity when a request arrives. No checkpoint, no task. The semantics
hypercorn's drain relies on are kept:

* an idle connection is closed when its keep-alive runs out;
* on `terminated` (the server is shutting down) an idle connection is closed at once, and a busy one
  as soon as its answer is done (the next time it turns idle);
* when the read side ends (the peer closed, or reading failed) the watch ends too, so the connection
  closes as soon as its answers are done.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.trio import tcp_server
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import TrioSingleTask


class KeepAliveDeadline:
    """A connection's `idle_task` (hypercorn calls `restart` when it turns idle, `stop` when busy)."""

    __slots__ = ("_ended", "_idle_since", "_keep_alive_s", "_scope", "_started", "_terminated")

    def __init__(self) -> None:
        self._scope: trio.CancelScope | None = None
        self._idle_since: float | None = None
        self._keep_alive_s = math.inf
        self._terminated = False
        self._started = False
        self._ended = False

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        """The connection is idle. The first call starts `action`, the connection's watch, which
        hypercorn passes as its `_idle_timeout` (replaced by `_watch` below)."""
        self._idle_since = trio.current_time()
        if not self._started:
            self._started = True
            task_group._nursery.start_soon(action)
        self._move_deadline()

    async def stop(self) -> None:
        """A request arrived: no deadline while it is served."""
        self._idle_since = None
        self._move_deadline()

    def end(self) -> None:
        """The connection's read side ended: nothing more to wait for."""
        self._ended = True
        if self._scope is not None:
            self._scope.cancel()

    def _has_ended(self) -> bool:  # a method: `end()` changes it while the watch waits
        return self._ended

    def _deadline(self) -> float:
        if self._idle_since is None:
            return math.inf
        return self._idle_since if self._terminated else self._idle_since + self._keep_alive_s

    def _move_deadline(self) -> None:
        if self._scope is not None:
            self._scope.deadline = self._deadline()

    async def wait_until_due(self, keep_alive_s: float, terminated: Any) -> bool:
        """True when the connection should be closed now (idle too long, or idle while the server
        is shutting down); False when the read side ended first."""
        self._keep_alive_s = keep_alive_s
        while True:
            if self._has_ended():
                return False
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._scope = scope
                if self._terminated:
                    await trio.sleep_forever()
                else:
                    await terminated.wait()
            self._scope = None
            if self._has_ended():
                return False
            if not scope.cancelled_caught:  # the server is shutting down: close once idle
                self._terminated = True
            elif self._idle_since is not None and trio.current_time() >= self._deadline():
                return True
            # else: the deadline passed while a request was arriving; wait for the new one


async def _watch(self: TCPServer) -> None:
    """Replaces `TCPServer._idle_timeout`: runs for the connection's whole life, not per idle spell."""
    deadline: Any = self.idle_task  # typed as hypercorn's TrioSingleTask; ours once installed
    if await deadline.wait_until_due(self.config.keep_alive_timeout, self.context.terminated):
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()


async def _read_data(self: TCPServer) -> None:
    try:
        await _original_read_data(self)
    finally:
        idle_task: Any = self.idle_task
        if isinstance(idle_task, KeepAliveDeadline):
            idle_task.end()


_tcp_server_names = vars(tcp_server)  # TCPServer.__init__ builds its idle task from this name
_original_idle_timeout = TCPServer._idle_timeout
_original_read_data = TCPServer._read_data


def install() -> None:
    """Idempotent; applies to connections accepted afterwards."""
    _tcp_server_names["TrioSingleTask"] = KeepAliveDeadline
    TCPServer._idle_timeout = _watch  # type: ignore[method-assign]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]


def installed() -> bool:
    return _tcp_server_names["TrioSingleTask"] is KeepAliveDeadline and TCPServer._idle_timeout is _watch


def uninstall() -> None:
    _tcp_server_names["TrioSingleTask"] = TrioSingleTask
    TCPServer._idle_timeout = _original_idle_timeout  # type: ignore[method-assign]
    TCPServer._read_data = _original_read_data  # type: ignore[method-assign]
