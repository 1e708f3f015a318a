"""Shared machinery for the gateway benchmarks (gateway_memory, gateway_fanout, gateway_latency).

Two subprocesses speaking JSON lines on stdin/stdout, each a module of its own:

* ``python -m bench._ws_server_process --impl pingpull|trio-websocket|websockets``: the WebSocket
  server under test (the real gateway, or an idiomatic baseline), driven by `HarnessServer`;
* ``python -m bench._ws_client_process``: a cheap load generator (one epoll, many raw sockets),
  driven by `ClientPool`.

And here, in the parent: `Child` (a JSON-line subprocess), `ClientPool`, `HarnessServer`,
`CliServer` (the real ``pingpull serve``) and the report helpers (machine info, Markdown).

Times crossing processes are ``time.monotonic_ns()``: CLOCK_MONOTONIC is system-wide on Linux.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import select
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
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


def _module_argv(role: str, *args: str) -> list[str]:
    module = {"client": "bench._ws_client_process", "server": "bench._ws_server_process"}[role]
    return [sys.executable, "-m", module, *args]


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
