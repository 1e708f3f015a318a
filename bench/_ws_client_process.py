"""The load-generating client process of the gateway benchmarks: ``python -m bench._ws_client_process``.

One process, one ``epoll``, many non-blocking raw sockets with a hand-written WebSocket handshake;
it counts and verifies every frame (22 bytes: ``0x82 0x14`` + a version-1 pingpull frame, NEW heads
strictly consecutive per connection), answers pings, and can record (message id, arrival time) for
latency runs or tap a Redis pattern subscription. Driven by `ClientPool` (bench/_gateway_support.py)
with JSON lines on stdin/stdout.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any, Final

from bench._gateway_support import FRAME, ISSUER, KIND_HELLO, KIND_NEW, Json

# ==================================================================================================
# the client process: one epoll, many raw sockets


_CONNECTING, _HANDSHAKE, _OPEN = 0, 1, 2
_WS_KEY: Final = base64.b64encode(b"pingpull-bench-k").decode()
_MAX_HEAD: Final = 16 * 1024


class _Conn:
    __slots__ = ("buf", "count", "device_id", "hello", "last_head", "request", "sock", "state")

    def __init__(self, sock: socket.socket, device_id: int, request: bytes) -> None:
        self.sock = sock
        self.device_id = device_id
        self.request = request
        self.state = _CONNECTING
        self.buf = bytearray()
        self.hello = False
        self.count = 0
        self.last_head = -1


def _masked(opcode: int, payload: bytes) -> bytes:
    # Client frames must be masked; a zero key leaves the payload as is.
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


class ClientWorker:
    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.stdin_fd = sys.stdin.fileno()
        self.epoll.register(self.stdin_fd, select.EPOLLIN)
        self.stdin_buf = b""
        self.running = True
        # connect phase
        self.connect_queue: list[tuple[int, str | None]] = []
        self.connect_target: tuple[str, int, str] = ("", 0, "")
        self.inflight = 0
        self.concurrency = 64
        self.phase_established = 0
        self.phase_failed = 0
        self.phase_errors: list[str] = []
        self.phase_started = 0.0
        self.deadline: float | None = None
        self.pending: str | None = None
        # counters
        self.established = 0
        self.lost = 0
        self.frames = 0
        self.bad = 0
        self.pings = 0
        # expect phase
        self.expect_remaining = 0
        self.expect_per_conn = 0
        self.expect_first_ns = 0
        self.expect_last_ns = 0
        self.expect_cpu0 = 0.0
        self.expect_bad0 = 0
        # latency recording: (ref, monotonic ns, wall ns)
        self.recording = False
        self.records: list[tuple[int, int, int]] = []
        self.tap_sock: socket.socket | None = None
        self.tap_reader: Any = None
        self.tap_records: list[tuple[int, int]] = []

    # --- stdin -----------------------------------------------------------------------------------

    def reply(self, message: Json) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def on_stdin(self) -> None:
        chunk = os.read(self.stdin_fd, 1 << 20)
        if not chunk:
            self.running = False
            return
        self.stdin_buf += chunk
        while b"\n" in self.stdin_buf:
            line, _, self.stdin_buf = self.stdin_buf.partition(b"\n")
            try:
                self.command(json.loads(line))
            except Exception as exc:  # report, keep serving
                self.reply({"error": f"{type(exc).__name__}: {exc}"})

    def command(self, message: Json) -> None:
        cmd = message["cmd"]
        if cmd == "connect":
            self.start_connect(message)
        elif cmd == "expect":
            self.start_expect(message)
        elif cmd == "stats":
            self.reply(
                {
                    "open": sum(1 for c in self.conns.values() if c.state == _OPEN and c.hello),
                    "lost": self.lost,
                    "frames": self.frames,
                    "bad": self.bad,
                    "pings": self.pings,
                }
            )
        elif cmd == "record":
            self.recording = bool(message["on"])
            self.reply({"recording": self.recording})
        elif cmd == "dump":
            self.reply({"records": self.records, "tap": self.tap_records})
            self.records, self.tap_records = [], []
        elif cmd == "tap":
            self.start_tap(message)
        elif cmd == "close":
            for fd, conn in list(self.conns.items()):
                self.epoll.unregister(fd)
                conn.sock.close()
            self.conns.clear()
            self.reply({"closed": True})
        elif cmd == "exit":
            self.running = False
        else:
            self.reply({"error": f"unknown command {cmd!r}"})

    # --- connecting ------------------------------------------------------------------------------

    def start_connect(self, message: Json) -> None:
        first_id, count = int(message["first_id"]), int(message["count"])
        tokens: list[str | None]
        if message.get("tokens") is not None:
            tokens = list(message["tokens"])
        elif message.get("keys_dir"):
            from pingpull.tokens import load_keys

            signer = load_keys(Path(message["keys_dir"])).signer(ttl_s=3600, issuer=ISSUER)
            tokens = [signer.mint(first_id + i, first_id + i) for i in range(count)]
        else:
            tokens = [None] * count
        self.connect_queue = [(first_id + i, tokens[i]) for i in range(count)]
        self.connect_queue.reverse()
        self.connect_target = (str(message["host"]), int(message["port"]), str(message["path"]))
        self.concurrency = int(message.get("concurrency", 64))
        self.phase_established = self.phase_failed = 0
        self.phase_errors = []
        self.phase_started = time.monotonic()
        self.deadline = self.phase_started + float(message.get("timeout_s", 120))
        self.pending = "connect"
        self.fill_connects()

    def fill_connects(self) -> None:
        host, port, path = self.connect_target
        while self.connect_queue and self.inflight < self.concurrency:
            device_id, token = self.connect_queue.pop()
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {_WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
                f"{auth}\r\n"
            ).encode()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                self.handshake_failed(None, f"connect: {os.strerror(code)}")
                continue
            conn = _Conn(sock, device_id, request)
            self.conns[sock.fileno()] = conn
            self.epoll.register(sock.fileno(), select.EPOLLOUT)
            self.inflight += 1

    def handshake_failed(self, conn: _Conn | None, why: str) -> None:
        if conn is not None:
            self.drop(conn)
            self.inflight -= 1
        self.phase_failed += 1
        if len(self.phase_errors) < 5:
            self.phase_errors.append(why)

    def drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)
            self.conns.pop(fd, None)
        conn.sock.close()

    def on_writable(self, conn: _Conn) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.handshake_failed(conn, f"connect: {os.strerror(err)}")
            return
        try:
            conn.sock.send(conn.request)
        except OSError as exc:
            self.handshake_failed(conn, f"send: {exc}")
            return
        conn.state = _HANDSHAKE
        self.epoll.modify(conn.sock.fileno(), select.EPOLLIN)

    # --- reading ---------------------------------------------------------------------------------

    def on_readable(self, conn: _Conn, now_ns: int, wall_ns: int) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.closed(conn, f"recv: {exc}")
            return
        if not data:
            self.closed(conn, "closed by the server")
            return
        buf = conn.buf
        buf += data
        if conn.state == _HANDSHAKE:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self.handshake_failed(conn, "response head too large")
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                self.handshake_failed(conn, status.decode("latin-1")[:120])
                return
            del buf[: end + 4]
            conn.state = _OPEN
        self.parse_frames(conn, now_ns, wall_ns)

    def closed(self, conn: _Conn, why: str) -> None:
        if conn.state == _OPEN and conn.hello:
            self.lost += 1
            self.drop(conn)
        else:
            self.handshake_failed(conn, why)

    def parse_frames(self, conn: _Conn, now_ns: int, wall_ns: int) -> None:
        buf = conn.buf
        size = len(buf)
        pos = 0
        unpack_from = FRAME.unpack_from
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 == 0x82 and b1 == 20:  # the fast path: one signal frame
                if size - pos < 22:
                    break
                version, kind, _arg, head, ref = unpack_from(buf, pos + 2)
                pos += 22
                if version != 1:
                    self.bad += 1
                elif kind == KIND_NEW and conn.hello:
                    self.frames += 1
                    conn.count += 1
                    if conn.last_head >= 0 and head != conn.last_head + 1:
                        self.bad += 1
                    conn.last_head = head
                    if self.recording:
                        self.records.append((ref, now_ns, wall_ns))
                    if self.expect_remaining > 0:
                        if self.expect_first_ns == 0:
                            self.expect_first_ns = now_ns
                        self.expect_remaining -= 1
                        if self.expect_remaining == 0:
                            self.expect_last_ns = now_ns
                elif kind == KIND_HELLO and not conn.hello:
                    conn.hello = True
                    self.inflight -= 1
                    self.established += 1
                    self.phase_established += 1
                else:
                    self.bad += 1
                continue
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            if size - pos < header + length:
                break
            opcode = b0 & 0x0F
            payload = bytes(buf[pos + header : pos + header + length])
            pos += header + length
            if opcode == 0x9:
                self.pings += 1
                with contextlib.suppress(OSError):
                    conn.sock.send(_masked(0xA, payload))
            elif opcode == 0x8:
                with contextlib.suppress(OSError):
                    conn.sock.send(_masked(0x8, payload[:2]))
                del buf[:pos]
                self.closed(conn, f"close frame {payload[:2].hex()}")
                return
            elif opcode != 0xA:
                self.bad += 1
        if pos:
            del buf[:pos]

    # --- fan-out counting ------------------------------------------------------------------------

    def start_expect(self, message: Json) -> None:
        open_conns = [c for c in self.conns.values() if c.state == _OPEN and c.hello]
        for conn in open_conns:
            conn.count = 0
        self.expect_per_conn = int(message["per_conn"])
        self.expect_remaining = self.expect_per_conn * len(open_conns)
        self.expect_first_ns = self.expect_last_ns = 0
        self.expect_cpu0 = time.process_time()
        self.expect_bad0 = self.bad
        self.deadline = time.monotonic() + float(message["timeout_s"])
        self.pending = "expect"
        self.reply({"armed": True, "conns": len(open_conns)})

    def finish_expect(self, timed_out: bool) -> None:
        counts = [c.count for c in self.conns.values() if c.state == _OPEN and c.hello]
        self.reply(
            {
                "timed_out": timed_out,
                "missing": self.expect_remaining,
                "first_ns": self.expect_first_ns,
                "last_ns": self.expect_last_ns,
                "cpu_s": time.process_time() - self.expect_cpu0,
                "bad": self.bad - self.expect_bad0,
                "min_per_conn": min(counts, default=0),
                "max_per_conn": max(counts, default=0),
                "conns": len(counts),
            }
        )
        self.expect_remaining = 0
        self.pending = None

    # --- Redis tap (latency runs) ----------------------------------------------------------------

    def start_tap(self, message: Json) -> None:
        import hiredis

        sock = socket.create_connection((message["host"], int(message["port"])))
        pattern = message["pattern"].encode()
        sock.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(pattern), pattern))
        reader = hiredis.Reader()
        while True:
            reader.feed(sock.recv(4096))
            reply = reader.gets()
            if reply is not False:
                break
        sock.setblocking(False)
        self.tap_sock, self.tap_reader = sock, reader
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.reply({"tapping": True})

    def on_tap(self, now_ns: int) -> None:
        assert self.tap_sock is not None
        try:
            data = self.tap_sock.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            self.epoll.unregister(self.tap_sock.fileno())
            self.tap_sock.close()
            self.tap_sock = None
            return
        self.tap_reader.feed(data)
        while (reply := self.tap_reader.gets()) is not False:
            if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
                frame = reply[3]
                if len(frame) == 20:
                    self.tap_records.append((FRAME.unpack(frame)[4], now_ns))

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        self.reply({"ready": True, "pid": os.getpid()})
        poll = self.epoll.poll
        conns = self.conns
        while self.running:
            events = poll(0.05, 4096)
            now_ns = time.monotonic_ns()
            wall_ns = time.time_ns()
            for fd, mask in events:
                conn = conns.get(fd)
                if conn is None:
                    if fd == self.stdin_fd:
                        self.on_stdin()
                    elif self.tap_sock is not None and fd == self.tap_sock.fileno():
                        self.on_tap(now_ns)
                    continue
                if conn.state == _CONNECTING:
                    if mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                        self.on_writable(conn)
                else:
                    self.on_readable(conn, now_ns, wall_ns)
            self.check_pending()

    def check_pending(self) -> None:
        if self.pending == "connect":
            self.fill_connects()
            if not self.connect_queue and self.inflight == 0:
                self.finish_connect(timed_out=False)
            elif self.deadline is not None and time.monotonic() > self.deadline:
                self.finish_connect(timed_out=True)
        elif self.pending == "expect":
            if self.expect_remaining <= 0:
                self.finish_expect(timed_out=False)
            elif self.deadline is not None and time.monotonic() > self.deadline:
                self.finish_expect(timed_out=True)

    def finish_connect(self, timed_out: bool) -> None:
        self.reply(
            {
                "established": self.phase_established,
                "failed": self.phase_failed + (self.inflight + len(self.connect_queue) if timed_out else 0),
                "timed_out": timed_out,
                "elapsed_s": time.monotonic() - self.phase_started,
                "errors": self.phase_errors,
            }
        )
        self.connect_queue = []
        self.pending = None


def client_main() -> None:
    ClientWorker().run()


if __name__ == "__main__":
    client_main()
