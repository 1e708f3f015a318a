"""The protocol lab's byte-counting proxy says when it closed a device's connection because the server
could not be reached, so a "disconnected without a response" in a report can be told apart."""

from __future__ import annotations

import contextlib
import socket

import trio

from bench.protocols.proxy import Counters, Proxy


async def a_closed_port() -> int:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()  # nothing listens there now: a connect is refused
    return port


async def test_a_refused_upstream_is_counted_and_the_client_closed() -> None:
    counters = Counters(devices=2, silence_s=1.0)
    dead = ("127.0.0.1", await a_closed_port())
    proxy = Proxy(counters, {"content": dead, "signal": dead})
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy.accept_loop, trio.SocketListener(listener), 1, "content")
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(b"GET /v1/inbox HTTP/1.1\r\nHost: t\r\n\r\n")
            # Closed with nothing answered: an end of stream, or a reset (the request was never read).
            with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
                assert await client.receive_some(100) == b""
        nursery.cancel_scope.cancel()
    snapshot = counters.snapshot()
    assert snapshot["upstream_failures"] == {"content": [0, 1], "signal": [0, 0]}
    assert "ConnectionRefusedError" in snapshot["last_upstream_error"]["content"]
