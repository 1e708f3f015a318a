"""Shared machinery for the gateway benchmarks (gateway_memory, gateway_fanout, gateway_latency).

Three pieces, each usable as a subprocess speaking JSON lines on stdin/stdout:

* ``python -m bench._gateway_support server --impl pingpull|trio-websocket|websockets``: a WebSocket
  server doing the benchmark's job (accept, send one 20-byte binary frame on connect, answer pings,
  hold idle, broadcast on command). ``pingpull`` is the real gateway (`signal_svc.gateway.Gateway` on
  `signal_svc.service.run_signal`, a `MemoryBus`); a ``publish`` command goes through the gateway's
  real path: bus callback -> hub -> pre-encoded frame -> non-blocking socket send. The two baselines are
  the idiomatic servers of their libraries.
* ``python -m bench._gateway_support client``: a cheap load generator. One process, one ``epoll``, many
  non-blocking raw sockets with a hand-written WebSocket handshake; it counts and verifies every frame
  (22 bytes: ``0x82 0x14`` + a version-1 pingpull frame, NEW heads strictly consecutive per
  connection), answers pings, and can record (message id, arrival time) for latency runs or tap a Redis
  pattern subscription.
* In the parent: `Child` (a JSON-line subprocess), `ClientPool`, `HarnessServer`, `CliServer` (the real
  ``pingpull serve``) and the report helpers (machine info, Markdown).

Times crossing processes are ``time.monotonic_ns()``: CLOCK_MONOTONIC is system-wide on Linux.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import errno
import gc
import json
import os
import platform
import re
import select
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from bench._report import code_version as code_version
from bench._report import cpu_model as cpu_model
from bench._report import package_version as package_version
from bench._report import write_report as write_report

ROOT: Final = Path(__file__).resolve().parents[1]
RESULTS_DIR: Final = ROOT / "bench" / "results"
FRAME: Final = struct.Struct(">BBHQQ")  # pingpull.wire's layout: version, kind, arg, head, ref
KIND_HELLO: Final = 0
KIND_NEW: Final = 1
WS_BINARY_20: Final = b"\x82\x14"
ISSUER: Final = "pingpull"
SERVER_IMPLS: Final = ("pingpull", "trio-websocket", "websockets")

Json = dict[str, Any]


# ==================================================================================================
# report helpers


def machine_info(packages: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    versions = ", ".join(f"{name} {package_version(name)}" for name in packages)
    load1, load5, _ = os.getloadavg()
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: nproc {os.cpu_count()}, CPU {cpu_model()}, {platform.system()} {platform.release()}, "
        f"load average at the end {load1:.2f} / {load5:.2f} (1 / 5 min)",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- libraries: {versions}",
        code_version(),
        *extra,
    ]


def command_line(module: str) -> str:
    return shlex.join([".venv/bin/python", "-m", module, *sys.argv[1:]])


def output_arg(value: str) -> Path | None:
    return None if value in ("", "-") else Path(value)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}×" if baseline and baseline == baseline and value == value else "n/a"


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _all_process_ticks() -> dict[int, int]:
    """utime + stime (clock ticks) of every process on the machine, by pid."""
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


class ForeignLoad:
    """CPU used by processes that are not ours while we measure (others share this machine).

    `start()` then `stop(own_pids)` -> other processes' CPU seconds per wall second (1.0 = one CPU
    kept busy by someone else). A process that appeared meanwhile counts with all its CPU time."""

    def __init__(self) -> None:
        self._ticks: dict[int, int] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._ticks = _all_process_ticks()
        self._t0 = time.monotonic()

    def stop(self, own_pids: Iterable[int]) -> float:
        after = _all_process_ticks()
        wall = time.monotonic() - self._t0
        own = set(own_pids) | {os.getpid()}
        used = sum(t - self._ticks.get(pid, 0) for pid, t in after.items() if pid not in own)
        return max(0.0, used / os.sysconf("SC_CLK_TCK") / wall) if wall > 0 else 0.0


def wait_for_quiet(max_foreign: float, timeout_s: float, exclude: Iterable[int] = ()) -> float:
    """Wait up to `timeout_s` for a second in which other processes use at most `max_foreign` CPUs;
    returns the last reading."""
    deadline = time.monotonic() + timeout_s
    reading = float("inf")
    while True:
        probe = ForeignLoad()
        probe.start()
        time.sleep(1.0)
        reading = probe.stop(exclude)
        if reading <= max_foreign or time.monotonic() >= deadline:
            return reading


def cpu_sets(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): the server alone on CPU 0, the load generators on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


# ==================================================================================================
# profiling with py-spy (optional: `pip install py-spy`)


def pyspy_executable() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    import shutil

    return shutil.which("py-spy")


class PySpy:
    """`py-spy record` on a process, raw (collapsed) stacks, line numbers kept; stop() parses them."""

    def __init__(self, pid: int, output: Path, rate_hz: int = 500) -> None:
        executable = pyspy_executable()
        if executable is None:
            raise ChildError("py-spy is not installed (pip install py-spy)")
        self.output = output
        self.proc = subprocess.Popen(
            [
                executable,
                "record",
                "-p",
                str(pid),
                "-r",
                str(rate_hz),
                "-f",
                "raw",
                "-o",
                str(output),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attach

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Profile:
    samples: int
    self_lines: list[tuple[str, float]]  # (function (file:line), share of samples)
    inclusive: list[tuple[str, float]]  # (function (file), share of samples)


def _source_line(frame: str) -> str:
    """`func (path:line)` -> the stripped source line, when the file is found under ROOT."""
    import linecache

    match = re.search(r"\((.+):(\d+)\)$", frame)
    if match is None:
        return ""
    path = Path(match.group(1))
    path = path if path.is_absolute() else ROOT / path
    return linecache.getline(str(path), int(match.group(2))).strip()


def summarize_pyspy(path: Path, focus: str, limit: int = 15) -> Profile:
    """Self time by line and inclusive time by function, over the stacks under a frame whose text
    contains `focus` (only that frame and its callees count)."""
    self_counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        start = next((i for i, frame in enumerate(frames) if focus in frame), None)
        if start is None:
            continue
        frames = frames[start:]
        count = int(count_text)
        total += count
        leaf = frames[-1]
        source = _source_line(leaf)
        leaf = f"{leaf}: {source}" if source else leaf
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for name in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
            inclusive[name] = inclusive.get(name, 0) + count

    def top(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:limit]
        return [(name, n / total) for name, n in ranked] if total else []

    return Profile(samples=total, self_lines=top(self_counts), inclusive=top(inclusive))


# ==================================================================================================
# subprocesses speaking JSON lines


class ChildError(RuntimeError):
    pass


class Child:
    """A subprocess that reads JSON commands on stdin and answers JSON lines on stdout."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        cpus: set[int] | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        log_dir = log_dir or Path(tempfile.gettempdir())
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()

        def preexec() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            env=dict(env) if env is not None else None,
            preexec_fn=preexec,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: Json) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout_s: float) -> Json:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"{self.name}: no answer within {timeout_s:g} s (log: {self.log_path})")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise ChildError(
                        f"{self.name} exited (rc={self.proc.poll()}); log {self.log_path}:\n{self.log_tail()}"
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: Json = json.loads(line)
        if "error" in answer:
            raise ChildError(f"{self.name}: {answer['error']}")
        return answer

    def request(self, message: Json, timeout_s: float = 60.0) -> Json:
        self.send(message)
        return self.recv(timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"cmd": "exit"})
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


def _module_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench._gateway_support", *args]


class HarnessServer:
    """One of SERVER_IMPLS running in a `server` subprocess of this module."""

    def __init__(
        self,
        impl: str,
        *,
        keys_dir: Path,
        ping_interval_s: float,
        cpus: set[int] | None = None,
        log_dir: Path | None = None,
        trace_frames: int = 0,
    ) -> None:
        self.impl = impl
        argv = _module_argv(
            "server", "--impl", impl, "--keys-dir", str(keys_dir), "--ping-interval", str(ping_interval_s)
        )
        if trace_frames:
            argv += ["--trace", str(trace_frames)]
        self.child = Child(argv, name=f"server-{impl}", cpus=cpus, log_dir=log_dir)
        ready = self.child.recv(60)
        self.port = int(ready["port"])
        self.pid = self.child.pid

    def connections(self) -> int:
        return int(self.child.request({"cmd": "count"})["connections"])

    def request(self, message: Json, timeout_s: float = 120.0) -> Json:
        return self.child.request(message, timeout_s)

    def close(self) -> None:
        self.child.close()


def pingpull_executable() -> str:
    candidate = Path(sys.executable).parent / "pingpull"
    return str(candidate) if candidate.exists() else "pingpull"


def read_ready_line(log_path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> dict[str, str]:
    """Wait for `pingpull serve`'s ``ready`` log line; its key=value fields."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChildError(f"pingpull serve exited rc={proc.returncode}:\n{log_path.read_text()[-3000:]}")
        for line in log_path.read_text(errors="replace").splitlines():
            if " ready " in line and "_url=" in line:
                return dict(re.findall(r"(\w+)=(\S+)", line))
        time.sleep(0.1)
    raise ChildError(
        f"pingpull serve did not log 'ready' within {timeout_s} s:\n{log_path.read_text()[-3000:]}"
    )


class CliServer:
    """The real ``pingpull serve`` (embedded or one service), logging to a file in the data dir."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cpus: set[int] | None = None,
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()

        def preexec() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PINGPULL_")}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [pingpull_executable(), "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=full_env,
            preexec_fn=preexec,
        )
        self.urls = read_ready_line(log_path, self.proc)
        self.pid = self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class ConnectResult:
    established: int
    failed: int
    timed_out: bool
    elapsed_s: float
    errors: list[str]


class ClientPool:
    """Several `client` subprocesses sharing the connections between them."""

    def __init__(self, processes: int, *, cpus: set[int] | None = None, log_dir: Path | None = None) -> None:
        self.clients = [
            Child(_module_argv("client"), name=f"client-{i}", cpus=cpus, log_dir=log_dir)
            for i in range(processes)
        ]
        for client in self.clients:
            client.recv(30)  # ready

    def _all(self, message: Json | Sequence[Json], timeout_s: float) -> list[Json]:
        messages = [message] * len(self.clients) if isinstance(message, dict) else list(message)
        for client, msg in zip(self.clients, messages, strict=True):
            client.send(msg)
        return [client.recv(timeout_s) for client in self.clients]

    def connect(
        self,
        host: str,
        port: int,
        *,
        first_id: int,
        count: int,
        keys_dir: Path | None = None,
        tokens: Sequence[str] | None = None,
        path: str = "/v1/signal",
        concurrency: int = 64,
        timeout_s: float = 120.0,
    ) -> ConnectResult:
        """Open `count` connections (device ids first_id.., user id = device id), spread evenly."""
        n = len(self.clients)
        messages: list[Json] = []
        start = 0
        for i in range(n):
            share = count // n + (1 if i < count % n else 0)
            message: Json = {
                "cmd": "connect",
                "host": host,
                "port": port,
                "path": path,
                "first_id": first_id + start,
                "count": share,
                "concurrency": concurrency,
                "timeout_s": timeout_s,
                "keys_dir": str(keys_dir) if keys_dir is not None else None,
                "tokens": list(tokens[start : start + share]) if tokens is not None else None,
            }
            messages.append(message)
            start += share
        started = time.monotonic()
        answers = self._all(messages, timeout_s + 30)
        return ConnectResult(
            established=sum(int(a["established"]) for a in answers),
            failed=sum(int(a["failed"]) for a in answers),
            timed_out=any(bool(a["timed_out"]) for a in answers),
            elapsed_s=time.monotonic() - started,
            errors=[e for a in answers for e in a["errors"]][:5],
        )

    def stats(self) -> Json:
        answers = self._all({"cmd": "stats"}, 30)
        return {key: sum(int(a[key]) for a in answers) for key in answers[0]}

    def arm(self, per_connection: int, timeout_s: float) -> int:
        """Start counting: each connection must now receive `per_connection` NEW frames."""
        answers = self._all({"cmd": "expect", "per_conn": per_connection, "timeout_s": timeout_s}, 30)
        return sum(int(a["conns"]) for a in answers)

    def collect(self, timeout_s: float) -> list[Json]:
        return [client.recv(timeout_s) for client in self.clients]

    def broadcast(self, message: Json, timeout_s: float = 60.0) -> list[Json]:
        return self._all(message, timeout_s)

    def close_connections(self) -> None:
        self._all({"cmd": "close"}, 60)

    def close(self) -> None:
        for client in self.clients:
            client.close()


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


# ==================================================================================================
# the server process


def _reply(message: Json) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class PublishClock:
    """Wall and CPU (user, system) time of a server's publishing loop."""

    def __init__(self) -> None:
        self.times0 = os.times()
        self.t0_ns = time.monotonic_ns()

    def result(self, frames: int) -> Json:
        t1_ns = time.monotonic_ns()
        times1 = os.times()
        user = times1.user - self.times0.user
        system = times1.system - self.times0.system
        return {
            "frames": frames,
            "t0_ns": self.t0_ns,
            "t1_ns": t1_ns,
            "cpu_s": user + system,
            "user_s": user,
            "sys_s": system,
        }


class _Heads:
    """The round counter: NEW heads continue across publish commands, so clients can check order."""

    def __init__(self) -> None:
        self.head = 0

    def take(self, rounds: int) -> range:
        first = self.head + 1
        self.head += rounds
        return range(first, first + rounds)


def _hello(interval_s: float) -> bytes:
    return FRAME.pack(1, KIND_HELLO, int(interval_s), 0, 0)


def _new(head: int, ref: int) -> bytes:
    return FRAME.pack(1, KIND_NEW, 0, head, ref)


async def _trio_commands(handle: Callable[[Json], Any]) -> None:
    """Read JSON lines from stdin in trio; `handle` returns an awaitable or None."""
    import inspect

    import trio

    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            message = json.loads(line)
            if message["cmd"] == "exit":
                return
            try:
                result = handle(message)
                if inspect.isawaitable(result):
                    result = await result
                _reply(result)
            except Exception as exc:
                _reply({"error": f"{type(exc).__name__}: {exc}"})


_TRACE_BASELINE: list[Any] = []


def _server_common(message: Json, connections: Callable[[], int]) -> Json | None:
    """Commands every server answers: count, gc, and (with --trace) tracemalloc snapshots."""
    import tracemalloc

    cmd = message["cmd"]
    if cmd == "count":
        return {"connections": connections()}
    if cmd == "gc":
        return {"collected": gc.collect()}
    if cmd == "trace_start":
        gc.collect()
        _TRACE_BASELINE[:] = [tracemalloc.take_snapshot()]
        return {"tracing": tracemalloc.is_tracing()}
    if cmd == "trace_top":
        # Python allocations alive now and not at trace_start, grouped by the allocating line.
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.compare_to(_TRACE_BASELINE[0], str(message.get("key", "lineno")))
        top = [
            {
                "where": " <- ".join(
                    f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}"
                    for frame in list(reversed(stat.traceback))[: int(message.get("frames", 4))]
                ),
                "size_diff": stat.size_diff,
                "count_diff": stat.count_diff,
            }
            for stat in stats[: int(message.get("limit", 30))]
        ]
        total = sum(stat.size_diff for stat in stats)
        return {"top": top, "total_diff": total, "connections": connections()}
    return None


async def _pingpull_server(args: argparse.Namespace) -> None:
    import trio

    from pingpull.bus import MemoryBus, Publication
    from pingpull.config import SignalSettings
    from pingpull.tokens import load_keys
    from signal_svc.gateway import Gateway
    from signal_svc.service import run_signal

    settings = SignalSettings(
        host="127.0.0.1",
        port=0,
        ping_interval_s=args.ping_interval,
        ping_timeout_s=min(10.0, args.ping_interval),
        max_connections=1_000_000,
        handshake_rate_per_s=1_000_000.0,
        handshake_burst=1_000_000,
        drain_window_s=0.0,
        drain_timeout_s=1.0,
    )
    bus = MemoryBus()
    verifier = load_keys(Path(args.keys_dir)).verifier(issuer=ISSUER, leeway_s=30)
    gateway = Gateway(settings=settings, bus=bus, verifier=verifier)
    heads = _Heads()

    async def publish(message: Json) -> Json:
        rounds, mode, batch = int(message["rounds"]), str(message["mode"]), int(message.get("batch", 1000))
        # The hub's order, the one the raw-send floor below walks too: which socket is written after
        # which decides how the client processes' wake-ups batch, and must not differ between the two.
        devices = list(dict.fromkeys((link.user_id, link.device_id) for link in gateway.hub.links()))
        plan: list[list[Publication]] = []
        for head in heads.take(0 if mode == "raw-send" else rounds):
            if mode == "per-user":
                # One publication per user, as the content service makes for a message to a group:
                # each carries its own frame (head, message id) for that user's device.
                plan.append([Publication(u, head, _new(head, d), (d,)) for u, d in devices])
            else:
                # One publication naming every device: one frame shared by all.
                plan.append([Publication(0, head, _new(head, 0), [d for _, d in devices])])
        if mode == "raw-send":
            # The floor, not a server: the same sockets, one pre-built 22-byte frame, a bare loop of
            # non-blocking send() calls. What is left above it is the gateway's own Python.
            socks = [link.sock for link in gateway.hub.links()]
            frames = [WS_BINARY_20 + _new(head, 0) for head in heads.take(rounds)]
            clock = PublishClock()
            sent = 0
            for frame in frames:
                for sock in socks:
                    sock.send(frame)
                    sent += 1
                await trio.lowlevel.checkpoint()
            return clock.result(sent)
        chunks = [pubs[i : i + batch] for pubs in plan for i in range(0, len(pubs), batch)]
        delivered0 = gateway.hub.frames_delivered
        clock = PublishClock()
        for chunk in chunks:
            await bus.publish(chunk)
            await trio.lowlevel.checkpoint()
        return clock.result(gateway.hub.frames_delivered - delivered0)

    async def steady(message: Json) -> Json:
        """Publish one NEW frame at a time at `rate`/s to random devices, as the content service does
        after each commit (`fanout.announce`: one `Publication` per recipient user); report when each
        `bus.publish` call started, so the client's arrival times give publish -> frame latency."""
        import random

        rate, count = float(message["rate"]), int(message["count"])
        first_ref = int(message.get("first_ref", 1))
        rng = random.Random(int(message.get("seed", 1)))
        devices = sorted({(link.user_id, link.device_id) for link in gateway.hub.links()})
        user_heads: dict[int, int] = {}
        records: list[tuple[int, int, int]] = []  # (ref, publish start ns, lag ns)
        start = trio.current_time() + 0.1
        for i in range(count):
            due = start + i / rate
            await trio.sleep_until(due)
            lag_ns = int((trio.current_time() - due) * 1e9)
            user_id, device_id = rng.choice(devices)
            head = user_heads[user_id] = user_heads.get(user_id, 0) + 1
            ref = first_ref + i
            publication = Publication(user_id, head, _new(head, ref), (device_id,))
            t_ns = time.monotonic_ns()
            await bus.publish([publication])
            records.append((ref, t_ns, lag_ns))
        return {"records": records}

    def handle(message: Json) -> Any:
        common = _server_common(message, lambda: len(gateway.hub))
        if common is not None:
            return common
        if message["cmd"] == "publish":
            return publish(message)
        if message["cmd"] == "steady":
            return steady(message)
        raise ValueError(f"unknown command {message['cmd']!r}")

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(run_signal, gateway, shutdown)
        _reply({"port": host_port(urls[0])[1], "pid": os.getpid()})
        await _trio_commands(handle)
        nursery.cancel_scope.cancel()


async def _trio_websocket_server(args: argparse.Namespace) -> None:
    import trio
    from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

    connections: set[WebSocketConnection] = set()
    hello = _hello(args.ping_interval)
    heads = _Heads()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        connections.add(ws)
        try:
            await ws.send_message(hello)
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass
        finally:
            connections.discard(ws)

    async def publish(message: Json) -> Json:
        rounds = int(message["rounds"])
        frames = 0
        clock = PublishClock()
        for head in heads.take(rounds):
            frame = _new(head, 0)
            for ws in list(connections):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send_message(frame)
                    frames += 1
        return clock.result(frames)

    def handle(message: Json) -> Any:
        common = _server_common(message, lambda: len(connections))
        if common is not None:
            return common
        if message["cmd"] == "publish":
            return publish(message)
        raise ValueError(f"unknown command {message['cmd']!r}")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        _reply({"port": server.port, "pid": os.getpid()})
        await _trio_commands(handle)
        nursery.cancel_scope.cancel()


async def _websockets_server(args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    connections: set[ServerConnection] = set()
    hello = _hello(args.ping_interval)
    heads = _Heads()

    async def handler(ws: ServerConnection) -> None:
        connections.add(ws)
        try:
            await ws.send(hello)
            await ws.wait_closed()
        finally:
            connections.discard(ws)

    async def publish(message: Json) -> Json:
        rounds = int(message["rounds"])
        frames = 0
        clock = PublishClock()
        for head in heads.take(rounds):
            targets = list(connections)
            broadcast(targets, _new(head, 0))
            frames += len(targets)
            await asyncio.sleep(0)
        return clock.result(frames)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        ping_interval=args.ping_interval,
        ping_timeout=min(10.0, args.ping_interval),
        backlog=4096,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _reply({"port": port, "pid": os.getpid()})
        while line := await reader.readline():
            message = json.loads(line)
            if message["cmd"] == "exit":
                break
            try:
                common = _server_common(message, lambda: len(connections))
                if common is not None:
                    _reply(common)
                elif message["cmd"] == "publish":
                    _reply(await publish(message))
                else:
                    raise ValueError(f"unknown command {message['cmd']!r}")
            except Exception as exc:
                _reply({"error": f"{type(exc).__name__}: {exc}"})
        server.close()


def server_main(args: argparse.Namespace) -> None:
    if args.trace:
        import tracemalloc

        tracemalloc.start(args.trace)
    if args.impl == "pingpull":
        import trio

        trio.run(_pingpull_server, args)
    elif args.impl == "trio-websocket":
        import trio

        trio.run(_trio_websocket_server, args)
    elif args.impl == "websockets":
        asyncio.run(_websockets_server(args))
    else:
        raise SystemExit(f"unknown --impl {args.impl}; choose from {', '.join(SERVER_IMPLS)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._gateway_support")
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--impl", default="pingpull", choices=SERVER_IMPLS)
    parser.add_argument("--keys-dir", default="")
    parser.add_argument("--ping-interval", type=float, default=25.0)
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off)")
    args = parser.parse_args(argv)
    if args.role == "client":
        client_main()
    else:
        server_main(args)


if __name__ == "__main__":
    main()
