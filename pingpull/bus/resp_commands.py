"""Redis commands from trio: one pipelined connection, RESP2 parsed by hiredis, no asyncio, no thread.

The content service publishes one EVALSHA per send. Through redis.asyncio behind the asyncio bridge
that cost a thread hop each way plus redis-py's pool, locks and parsing, on two threads. Here the
command is written from the trio thread and the reply parsed there: 0.3× the CPU per publish
(`python -m bench.client_costs`; docs/architecture.md, "The Redis bus").

How it works:

* One connection, opened at the first command (AUTH, SELECT, CLIENT SETNAME, PING, as the
  subscriber's) and again at the first command after it broke. Commands from concurrent callers are
  written in the order they are issued, without waiting for earlier replies (pipelining: Redis
  answers in order), and a reader task hands each reply to the caller waiting for it.
* A command is written at once with a non-blocking `send`; only what the socket does not take is
  queued for a writer task, and later commands queue behind it, so commands never interleave.
* Each call waits at most `timeout_s` for its reply. A timeout, a broken connection or a protocol
  error fails every call in flight with `BusError` and drops the connection (replies can no longer
  be matched to callers); a cancelled caller's reply is read and dropped.
* An error reply (`-ERR ...`) fails only its own call, as `BusError` (`RespReplyError`).
* `evalsha` runs a `Script` by its SHA-1 and loads it with EVAL when Redis answers NOSCRIPT.

`run` must be running (in a nursery) for the connection's reader and writer tasks.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import hiredis
import outcome
import trio

from pingpull.bus.base import BusError
from pingpull.bus.resp import describe, encode_command, open_connection, parse_url

logger = logging.getLogger("pingpull.bus")

_RECV_BUFFER_BYTES: Final = 64 * 1024
Arg = bytes | str | int | float


class RespReplyError(BusError):
    """Redis answered the command with an error reply."""


@dataclass(frozen=True)
class Script:
    """A Lua script, run with `RespCommands.evalsha`."""

    source: str
    sha1: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha1", hashlib.sha1(self.source.encode()).hexdigest().encode())


class _Call:
    __slots__ = ("abandoned", "task")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.abandoned = False


class _Connection:
    def __init__(self, sock: socket.socket, reader: hiredis.Reader) -> None:
        self.sock = sock
        self.reader = reader
        self.calls: deque[_Call] = deque()
        self.unsent = bytearray()
        self.has_unsent = trio.Event()
        self.broken: BusError | None = None


def _encode(parts: Sequence[Arg]) -> bytes:
    return encode_command(*(p if isinstance(p, bytes) else str(p).encode() for p in parts))


class RespCommands:
    def __init__(self, url: str, *, timeout_s: float = 5.0, client_name: str | None = None) -> None:
        if not timeout_s > 0:
            raise BusError("timeout_s must be > 0")
        self._endpoint = parse_url(url)
        self._timeout_s = timeout_s
        self._client_name = client_name
        self._connection: _Connection | None = None
        self._connecting = trio.Lock()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hosts the connection's tasks until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if (connection := self._connection) is not None:
                self._connection = None  # closed on purpose: nothing to warn about
                self._break(connection, BusError("the Redis client is closed"))

    async def execute(self, *parts: Arg) -> Any:
        """One command's reply (bytes, int, list, None); `BusError` if it failed or was refused."""
        reply = await self._call(_encode(parts))
        if isinstance(reply, hiredis.ReplyError):
            raise RespReplyError(f"Redis refused {parts[0]!r}: {reply}")
        return reply

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        head: list[Arg] = [script.sha1, len(keys), *keys, *args]
        reply = await self._call(_encode([b"EVALSHA", *head]))
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self._call(_encode([b"EVAL", script.source, *head[1:]]))
        if isinstance(reply, hiredis.ReplyError):
            raise RespReplyError(f"Redis refused the script: {reply}")
        return reply

    async def _call(self, command: bytes) -> Any:
        connection: _Connection | None = None
        with trio.move_on_after(self._timeout_s):
            connection = await self._connected()
            call = _Call(trio.lowlevel.current_task())
            connection.calls.append(call)
            self._write(connection, command)

            def abort(_: Any) -> trio.lowlevel.Abort:
                call.abandoned = True  # its reply is still read, in order, and dropped
                return trio.lowlevel.Abort.SUCCEEDED

            return await trio.lowlevel.wait_task_rescheduled(abort)
        error = BusError(f"no reply from Redis within {self._timeout_s:g} s")
        if connection is not None:  # the replies can no longer be matched to their calls
            self._break(connection, error)
        raise error

    async def _connected(self) -> _Connection:
        if self._connection is not None:
            return self._connection
        async with self._connecting:
            if (opened := self._current()) is not None:  # by the call that held the lock
                return opened
            if self._nursery is None:
                raise BusError("RespCommands.run is not running")
            try:
                trio_sock, reader = await open_connection(
                    self._endpoint, client_name=self._client_name, select_db=True
                )
            except (OSError, trio.BrokenResourceError, hiredis.HiredisError) as exc:
                raise BusError(
                    f"cannot connect to Redis at {self._endpoint.address}: {describe(exc)}"
                ) from exc
            sock = socket.socket(fileno=trio_sock.detach())
            sock.setblocking(False)
            connection = _Connection(sock, reader)
            self._connection = connection
            self._nursery.start_soon(self._read_loop, connection)
            self._nursery.start_soon(self._write_loop, connection)
            return connection

    def _current(self) -> _Connection | None:
        return self._connection

    def _write(self, connection: _Connection, command: bytes) -> None:
        if connection.unsent:  # the writer task is flushing: queue behind it, in order
            connection.unsent += command
            return
        try:
            sent = connection.sock.send(command)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the writer task meets the same error and breaks the connection
        if sent < len(command):
            connection.unsent += command[sent:]
            connection.has_unsent.set()

    async def _write_loop(self, connection: _Connection) -> None:
        try:
            while connection.broken is None:
                await connection.has_unsent.wait()
                while connection.unsent and connection.broken is None:
                    await trio.lowlevel.wait_writable(connection.sock)
                    try:
                        sent = connection.sock.send(connection.unsent)
                    except (BlockingIOError, InterruptedError):
                        continue
                    del connection.unsent[:sent]
                connection.has_unsent = trio.Event()
        except (OSError, trio.ClosedResourceError) as exc:
            self._break(connection, BusError(f"Redis connection broke: {describe(exc)}"))

    async def _read_loop(self, connection: _Connection) -> None:
        buf = bytearray(_RECV_BUFFER_BYTES)
        reader, sock, calls = connection.reader, connection.sock, connection.calls
        try:
            while connection.broken is None:
                await trio.lowlevel.wait_readable(sock)
                try:
                    received = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    continue
                if not received:
                    raise BusError("Redis closed the connection")
                reader.feed(cast(bytes, buf), 0, received)
                while (reply := reader.gets()) is not False:
                    if not calls:
                        raise BusError("a reply nobody asked for")
                    call = calls.popleft()
                    if not call.abandoned:
                        trio.lowlevel.reschedule(call.task, outcome.Value(reply))
        except (OSError, trio.ClosedResourceError, hiredis.HiredisError, BusError) as exc:
            self._break(connection, BusError(f"Redis connection broke: {describe(exc)}"))

    def _break(self, connection: _Connection, error: BusError) -> None:
        """Fail every call in flight and close the connection; the next command opens a new one."""
        if connection.broken is not None:
            return
        connection.broken = error
        if self._connection is connection:
            self._connection = None
            logger.warning("redis commands: %s", error)
        while connection.calls:
            call = connection.calls.popleft()
            if not call.abandoned:
                trio.lowlevel.reschedule(call.task, outcome.Error(error))
        connection.has_unsent.set()  # the writer task sees `broken` and ends
        trio.lowlevel.notify_closing(connection.sock)  # wakes a task waiting on it
        connection.sock.close()
