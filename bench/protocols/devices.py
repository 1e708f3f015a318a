"""The devices: many simulated phones in one process, run as `python -m bench.protocols.devices`.

Each device is what an app's background service would be, with its own HTTP connection pool:

* ``ws``, ``sse``, ``poll`` (long-poll): the client SDK's `DeviceSync` with that one transport: signal,
  then `GET /v1/inbox?after=cursor`, then `POST /v1/inbox/ack`;
* ``short``: short polling, which the SDK does not do: `GET /v1/inbox?after=cursor` every `interval_s`
  (from a random phase, so a thousand phones do not poll in lockstep), then the ack when it got items.

The content requests go through httpx, or with ``"content_http": "http1"`` through the SDK's
`Http1Session` (one keep-alive HTTP/1.1 connection per device, a third of httpx's client CPU).

Every content request of every strategy carries the same realistic mobile headers (`MOBILE_HEADERS`
plus the device's bearer token). The signal requests are the SDK's own.

Protocol on stdin/stdout (JSON lines): `{"cmd": "start", "strategy", "devices": [{"token",
"content_url", "signal_url"}], "interval_s", "connect_spread_s", "seed", "content_http"}` answers when
every device is connected (or has polled once); `{"cmd": "status"}` answers how many messages arrived;
`{"cmd": "stop"}` answers with every (message id, seq, arrival time) per device and the errors.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import trio

from bench.protocols.common import LineChannel, raise_fd_limit, self_cpu_s
from pingpull.client.content import ContentClient
from pingpull.client.errors import ClientError
from pingpull.client.http1 import Http1Session
from pingpull.client.signal import DeviceSync

STRATEGIES: Final = ("short", "poll", "sse", "ws")
# Not run by default: short polling over HTTP/2 (h2c, prior knowledge), where HPACK shrinks the
# repeated headers of every poll.
EXTRA_STRATEGIES: Final = ("short-h2",)
STRATEGY_LABELS: Final = {
    "short": "short polling",
    "short-h2": "short polling, HTTP/2",
    "poll": "long polling",
    "sse": "SSE",
    "ws": "WebSocket",
}
# What a phone's HTTP stack sends on every request besides Host and Authorization (a cookie-sized
# bearer token of ~260 bytes): iOS-style User-Agent, Accept, Accept-Language, Accept-Encoding.
MOBILE_HEADERS: Final = {
    "User-Agent": "PingPull/3.14.0 (iPhone15,3; iOS 17.5.1; Scale/3.00) CFNetwork/1496.0.7 Darwin/23.5.0",
    "Accept": "application/json",
    "Accept-Language": "en-GB,en;q=0.9",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
}
RETRY_AFTER_ERROR_S: Final = 1.0
# One TLS context for every client of the process: httpx builds (and loads the CA bundle into) a new
# one per AsyncClient otherwise, ~18 ms of CPU each, i.e. half a minute for a thousand devices'
# clients even though every URL here is plain http://.
SHARED_TLS: Final = ssl.create_default_context()

log = logging.getLogger("bench.protocols.devices")
Receipt = tuple[int, int, float]  # message id, inbox seq, time.monotonic() when the app had it


@dataclass
class Device:
    index: int
    token: str
    content_url: str
    signal_url: str
    received: list[Receipt] = field(default_factory=list)
    connected: trio.Event = field(default_factory=trio.Event)

    async def on_items(self, items: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        self.received.extend((int(item["message"]["id"]), int(item["seq"]), now) for item in items)


@dataclass
class Fleet:
    devices: list[Device]
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def error(self, device: Device, exc: BaseException) -> None:
        self.error_count += 1
        if len(self.errors) < 20:
            self.errors.append(f"device {device.index}: {exc!r}")

    @property
    def received(self) -> int:
        return sum(len(d.received) for d in self.devices)


def http_client(device: Device, http2: bool = False, lean: bool = False) -> httpx.AsyncClient | Http1Session:
    """The device's content connection: httpx, or with `lean` the SDK's `Http1Session` (HTTP/1.1)."""
    if lean and not http2:
        return Http1Session(device.content_url, headers=MOBILE_HEADERS, timeout_s=30, ssl_context=SHARED_TLS)
    # A phone keeps its connection between bursts (the content service keeps it 75 s).
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=2, keepalive_expiry=60)
    return httpx.AsyncClient(
        base_url=device.content_url,
        headers=MOBILE_HEADERS,
        timeout=30,
        limits=limits,
        verify=SHARED_TLS,
        http1=not http2,
        http2=http2,
    )


async def run_sdk(fleet: Fleet, device: Device, transport: str, lean: bool) -> None:
    """The SDK's DeviceSync on one transport; restarted if it ever gives up."""
    tls = device.signal_url.startswith(("https://", "wss://"))
    async with http_client(device, lean=lean) as http:
        while True:
            sync = DeviceSync(
                content=ContentClient(http, device.token),
                signal_url=device.signal_url,
                token=device.token,
                transports=(transport,),
                on_items=device.on_items,
                cursor=device.received[-1][1] if device.received else 0,
                # The SDK's own client for SSE and long-poll gets a transport on SHARED_TLS (building
                # an SSL context per device would cost ~18 ms of CPU each); an SSL context itself is
                # refused with a plain http:// gateway URL.
                ssl_context=SHARED_TLS if tls else None,
                http_transport=None if tls else httpx.AsyncHTTPTransport(verify=SHARED_TLS),
            )
            first_connection = sync.connected
            failed: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sync.run)
                    await first_connection.wait()
                    device.connected.set()
            # The nursery wraps what DeviceSync.run raised in an ExceptionGroup (an overloaded server's
            # 5xx, a dropped connection): record it and start the app's sync again, as an app would.
            except* (ClientError, httpx.HTTPError, OSError) as group:
                failed = group.exceptions[0]
            if failed is not None:
                fleet.error(device, failed)
                await trio.sleep(RETRY_AFTER_ERROR_S)


async def run_short_poll(
    fleet: Fleet, device: Device, interval_s: float, rng: random.Random, http2: bool, lean: bool
) -> None:
    """GET /v1/inbox?after=cursor every interval_s; ack what arrived."""
    async with http_client(device, http2, lean) as http:
        content = ContentClient(http, device.token)
        cursor = 0
        next_poll = trio.current_time() + rng.uniform(0, interval_s)
        while True:
            await trio.sleep_until(next_poll)
            next_poll += interval_s
            try:
                _, items = await content.pull_all(cursor)
                if items:
                    await device.on_items(items)
                    cursor = items[-1]["seq"]
                    await content.ack(cursor)
            except (ClientError, httpx.HTTPError, OSError) as exc:
                fleet.error(device, exc)
            device.connected.set()
            if next_poll < trio.current_time():  # fell behind (an overloaded server): skip, do not burst
                next_poll = trio.current_time() + interval_s


async def run_fleet(
    fleet: Fleet,
    strategy: str,
    interval_s: float,
    spread_s: float,
    seed: int,
    lean: bool,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    rng = random.Random(seed)
    starter: Callable[[Device], Any]
    if strategy in ("short", "short-h2"):

        def starter(device: Device) -> Any:
            return run_short_poll(fleet, device, interval_s, rng, strategy == "short-h2", lean)

    elif strategy in ("ws", "sse", "poll"):

        def starter(device: Device) -> Any:
            return run_sdk(fleet, device, strategy, lean)

    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    async with trio.open_nursery() as nursery:
        task_status.started()
        step = spread_s / max(1, len(fleet.devices))
        for device in fleet.devices:
            nursery.start_soon(starter, device)
            if step and not strategy.startswith("short"):
                await trio.sleep(step)


async def main() -> None:
    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING)
    channel = LineChannel()
    fleet: Fleet | None = None
    async with trio.open_nursery() as nursery:
        while (message := await channel.receive()) is not None:
            command = message.get("cmd")
            if command == "start" and fleet is None:
                fleet = Fleet(
                    [
                        Device(i, d["token"], d["content_url"], d["signal_url"])
                        for i, d in enumerate(message["devices"])
                    ]
                )
                started = time.monotonic()
                await nursery.start(
                    run_fleet,
                    fleet,
                    message["strategy"],
                    float(message["interval_s"]),
                    float(message["connect_spread_s"]),
                    int(message["seed"]),
                    message.get("content_http", "httpx") == "http1",
                )
                with trio.move_on_after(float(message.get("timeout_s", 120))):
                    for device in fleet.devices:
                        await device.connected.wait()
                connected = sum(d.connected.is_set() for d in fleet.devices)
                channel.send(
                    {"connected": connected, "seconds": time.monotonic() - started, "errors": fleet.errors}
                )
            elif command == "status" and fleet is not None:
                channel.send({"received": fleet.received, "error_count": fleet.error_count})
            elif command == "stop" and fleet is not None:
                nursery.cancel_scope.cancel()
                channel.send(
                    {
                        "received": [d.received for d in fleet.devices],
                        "errors": fleet.errors,
                        "error_count": fleet.error_count,
                        "cpu_s": self_cpu_s(),
                    }
                )
                return
            else:
                channel.send({"error": f"unexpected command {message!r}"})


if __name__ == "__main__":
    trio.run(main)
