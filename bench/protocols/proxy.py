"""A byte-counting TCP proxy on loopback, run as its own process: `python -m bench.protocols.proxy`.

Every device gets two listening ports of its own, one in front of the content service and one in front
of the gateway, so every byte is attributed to a device and a service without touching the client
SDK: the device is simply given these ports as its URLs. For each device the proxy counts

* bytes both ways, per service (what the client's sockets send and receive: HTTP heads and bodies,
  WebSocket frames; TLS is off, TCP/IP headers are not included),
* HTTP requests (HTTP/1.1 request lines, or HTTP/2 HEADERS frames, client to server),
* network wake-ups: a send or receive on any of the device's connections after more than
  `silence_s` (1 s) of silence on all of them counts as one,
* connections opened, per service, and reads (a lower bound on segments).

Protocol on stdin/stdout (one JSON object per line): the first line configures
`{"devices": D, "content": [host, port], "signal": [host, port], "silence_s": 1.0}` and is answered
with `{"ports": [[content_port, signal_port], ...]}`; then `{"cmd": "snapshot"}` returns every
counter (cumulative; the caller subtracts), and end of input stops the proxy.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Final

import trio

from bench.protocols.common import Json, LineChannel, raise_fd_limit, self_cpu_s

SERVICES: Final = ("content", "signal")
_REQUEST_LINE: Final = re.compile(
    rb"(?:^|\r\n)(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) [^ \r\n]+ HTTP/1\.[01]\r\n"
)
_BUFFER: Final = 1 << 16
_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_HEADERS: Final = 0x1


class RequestCounter:
    """Requests in the client-to-server bytes of one connection: HTTP/1.1 request lines, or for
    HTTP/2 with prior knowledge (h2c) the HEADERS frames the client sends (one per request)."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self._preface_left = len(_H2_PREFACE)
        self._head = b""
        self._skip = 0

    def feed(self, data: bytes) -> int:
        if self.mode is None:
            self.mode = "h2" if data.startswith(_H2_PREFACE[:4]) else "h1"
        if self.mode == "h1":
            return len(_REQUEST_LINE.findall(data))
        count, i, end = 0, 0, len(data)
        if self._preface_left:
            taken = min(self._preface_left, end)
            i, self._preface_left = taken, self._preface_left - taken
        while i < end:
            if self._skip:
                taken = min(self._skip, end - i)
                i, self._skip = i + taken, self._skip - taken
                continue
            piece = data[i : i + 9 - len(self._head)]
            self._head += piece
            i += len(piece)
            if len(self._head) == 9:
                self._skip = int.from_bytes(self._head[:3], "big")
                count += self._head[3] == _H2_HEADERS
                self._head = b""
        return count


class Counters:
    def __init__(self, devices: int, silence_s: float) -> None:
        self.silence_s = silence_s
        zeros = [0] * devices
        self.up = {s: list(zeros) for s in SERVICES}
        self.down = {s: list(zeros) for s in SERVICES}
        self.reads = {s: list(zeros) for s in SERVICES}
        self.connections = {s: list(zeros) for s in SERVICES}
        # Client connections closed at once because the proxy could not reach the server: the device
        # sees "disconnected without a response", which is the server's (or the machine's) doing.
        self.upstream_failures = {s: list(zeros) for s in SERVICES}
        self.last_upstream_error = dict.fromkeys(SERVICES, "")
        self.requests = list(zeros)
        self.wakeups = list(zeros)
        self.last_active = [-1e18] * devices

    def activity(self, device: int) -> None:
        now = time.monotonic()
        if now - self.last_active[device] > self.silence_s:
            self.wakeups[device] += 1
        self.last_active[device] = now

    def snapshot(self) -> Json:
        return {
            "up": self.up,
            "down": self.down,
            "reads": self.reads,
            "connections": self.connections,
            "upstream_failures": self.upstream_failures,
            "last_upstream_error": self.last_upstream_error,
            "requests": self.requests,
            "wakeups": self.wakeups,
            "cpu_s": self_cpu_s(),
            "at": time.monotonic(),
        }


class Proxy:
    def __init__(self, counters: Counters, upstreams: dict[str, tuple[str, int]]) -> None:
        self.counters = counters
        self.upstreams = upstreams

    async def accept_loop(self, listener: trio.SocketListener, device: int, service: str) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError:  # EMFILE and friends: back off instead of spinning
                    await trio.sleep(0.05)
                    continue
                nursery.start_soon(self.relay, stream, device, service)

    async def relay(self, client: trio.SocketStream, device: int, service: str) -> None:
        self.counters.connections[service][device] += 1
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            await sock.connect(self.upstreams[service])
        except OSError as exc:
            sock.close()
            self.counters.upstream_failures[service][device] += 1
            self.counters.last_upstream_error[service] = repr(exc)
            await client.aclose()
            return
        upstream = trio.SocketStream(sock)
        async with client, upstream, trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            nursery.start_soon(self.pump, client, upstream, device, service, RequestCounter(), scope)
            nursery.start_soon(self.pump, upstream, client, device, service, None, scope)

    async def pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        device: int,
        service: str,
        requests: RequestCounter | None,
        both: trio.CancelScope,
    ) -> None:
        """Copy one direction; `requests` is given for the client-to-server direction."""
        upward = requests is not None
        counters = self.counters
        totals = counters.up[service] if upward else counters.down[service]
        reads = counters.reads[service]
        try:
            while True:
                data = await source.receive_some(_BUFFER)
                if not data:
                    break
                totals[device] += len(data)
                reads[device] += 1
                counters.activity(device)
                if requests is not None:
                    counters.requests[device] += requests.feed(data)
                await sink.send_all(data)
            await sink.send_eof()  # half-close: the other direction may still be talking
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            both.cancel()


async def main() -> None:
    raise_fd_limit()
    channel = LineChannel()
    config = await channel.receive()
    if config is None:
        return
    devices = int(config["devices"])
    counters = Counters(devices, float(config.get("silence_s", 1.0)))
    proxy = Proxy(counters, {s: (str(config[s][0]), int(config[s][1])) for s in SERVICES})
    async with trio.open_nursery() as nursery:
        ports: list[list[int]] = []
        for device in range(devices):
            pair = []
            for service in SERVICES:
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                await sock.bind(("127.0.0.1", 0))
                sock.listen(64)
                pair.append(sock.getsockname()[1])
                nursery.start_soon(proxy.accept_loop, trio.SocketListener(sock), device, service)
            ports.append(pair)
        channel.send({"ports": ports})
        while (message := await channel.receive()) is not None:
            if message.get("cmd") == "snapshot":
                channel.send(counters.snapshot())
            else:
                channel.send({"error": f"unknown command {message!r}"})
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
