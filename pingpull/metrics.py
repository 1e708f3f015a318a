"""A minimal /metrics (and /healthz) HTTP endpoint for processes that serve no HTTP of their own.

The push bridge has no port; Prometheus still has to scrape it. h11 parses, prometheus-client
renders; one short-lived task per scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pingpull import logs

log = logging.getLogger("pingpull.metrics")

_MAX_HEAD_BYTES = 8192
_TIMEOUT_S = 10.0


def render(registries: Sequence[CollectorRegistry]) -> bytes:
    return b"".join(generate_latest(registry) for registry in registries)


async def serve_metrics(
    registries: Sequence[CollectorRegistry],
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    url = f"http://{host}:{sockname[1]}/metrics"
    logs.event(log, "metrics_listening", url=url)
    task_status.started(url)

    async def answer(stream: trio.SocketStream) -> None:
        await _answer(stream, registries)

    await trio.serve_listeners(answer, listeners)


async def _answer(stream: trio.abc.Stream, registries: Sequence[CollectorRegistry]) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
    with trio.move_on_after(_TIMEOUT_S):
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(_MAX_HEAD_BYTES)))
                    continue
                if not isinstance(event, h11.Request):
                    return
                path = event.target.split(b"?", 1)[0]
                if path == b"/metrics":
                    status, body, ctype = 200, render(registries), CONTENT_TYPE_LATEST.encode()
                elif path == b"/healthz":
                    status, body, ctype = 200, b'{"status":"ok"}', b"application/json"
                else:
                    status, body, ctype = 404, b"not found\n", b"text/plain"
                headers = [
                    (b"Content-Type", ctype),
                    (b"Content-Length", b"%d" % len(body)),
                    (b"Connection", b"close"),
                ]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                return
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()
