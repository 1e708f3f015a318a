"""The accept loop: a raw non-blocking listening socket, one task per accepted connection.

Accepting with the stdlib socket and `trio.lowlevel.wait_readable` (instead of `serve_tcp` and
SocketStream) keeps each idle connection at a task plus a bare socket object: the floor DESIGN.md
measured. On shutdown the listener closes first (no new connections), then the gateway drains.
"""

from __future__ import annotations

import logging
import socket

import trio

from pingpull import logs
from signal_svc.gateway import Gateway

log = logging.getLogger("pingpull.signal")

_BACKLOG = 4096
_ACCEPT_BATCH = 64


def open_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(_BACKLOG)
    listener.setblocking(False)
    return listener


def listener_url(listener: socket.socket, *, tls: bool = False) -> str:
    host, port = listener.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def run_signal(
    gateway: Gateway,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    listener = open_listener(gateway.settings.host, gateway.settings.port)
    url = listener_url(listener, tls=gateway.tls is not None)
    async with trio.open_nursery() as connections:
        gateway.nursery = connections
        async with trio.open_nursery() as accepting:
            accepting.start_soon(_accept_loop, gateway, listener, connections)
            logs.event(log, "signal_listening", url=url)
            task_status.started([url])
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        trio.lowlevel.notify_closing(listener)
        listener.close()
        await gateway.drain()
        connections.cancel_scope.cancel()


async def _accept_loop(gateway: Gateway, listener: socket.socket, nursery: trio.Nursery) -> None:
    while True:
        await trio.lowlevel.wait_readable(listener)
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _address = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                logs.event(log, "accept_failed", level=logging.WARNING, error=str(exc))
                await trio.sleep(0.1)
                break
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Admission is decided once the request head is read, so the refusal is an HTTP answer
            # the client can see (closing with its request unread would reset the connection).
            nursery.start_soon(gateway.handle, sock)
        await trio.lowlevel.checkpoint()
