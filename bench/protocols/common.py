"""Shared by `bench.protocols` and `bench.e2e`: child processes, /proc readers, machine facts, numbers.

Times that cross processes are `time.monotonic()`: CLOCK_MONOTONIC is system-wide on Linux, so a
timestamp taken by the sender in one process and by a device in another can be subtracted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import trio

from bench._report import code_version, cpu_model, package_version
from bench._report import write_report as write_report

ROOT: Final = Path(__file__).resolve().parents[2]
RESULTS_DIR: Final = ROOT / "bench" / "results"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

Json = dict[str, Any]


class BenchError(RuntimeError):
    """The benchmark could not run, or what it measured is wrong (e.g. a message was lost)."""


# --- /proc -----------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def self_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def _proc_stat() -> list[int]:
    with open("/proc/stat", encoding="ascii") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot: user, nice, system, irq, softirq (not idle, iowait,
    or steal, the time the hypervisor gave to other guests), from /proc/stat."""
    f = _proc_stat()
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / CLOCK_TICKS


def machine_interrupts_s() -> float:
    """CPU seconds in hard and soft interrupts since boot: on loopback, mostly the network stack's
    softirq, which is charged to no process."""
    f = _proc_stat()
    return (f[5] + f[6]) / CLOCK_TICKS


@dataclass
class LoadMeter:
    """How busy the whole machine was over a window: us, the kernel's interrupts, everyone else."""

    ours: Sequence[int]
    started_at: float = 0.0
    busy0: float = 0.0
    irq0: float = 0.0
    ours0: float = 0.0

    def _ours_now(self) -> float:
        total = self_cpu_s()
        for pid in self.ours:
            with contextlib.suppress(OSError):
                total += process_cpu_s(pid)
        return total

    def start(self) -> None:
        self.started_at, self.ours0 = time.monotonic(), self._ours_now()
        self.busy0, self.irq0 = machine_busy_s(), machine_interrupts_s()

    def stop(self) -> tuple[float, float, float]:
        """(busy cores, interrupt cores, cores used by other work), averaged over the window."""
        elapsed = max(1e-9, time.monotonic() - self.started_at)
        busy = (machine_busy_s() - self.busy0) / elapsed
        irq = (machine_interrupts_s() - self.irq0) / elapsed
        ours = (self._ours_now() - self.ours0) / elapsed
        return busy, irq, max(0.0, busy - irq - ours)


# --- machine and report helpers -----------------------------------------------------------------------


def machine_info(packages: Iterable[str], command: str, extra: Iterable[str] = ()) -> list[str]:
    versions = ", ".join(f"{name} {package_version(name)}" for name in packages)
    return [
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: nproc {os.cpu_count()}, {cpu_model()}, {platform.system()} {platform.release()}",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- libraries: {versions}",
        code_version(),
        *extra,
    ]


def command_line(prog: str, argv: Sequence[str]) -> str:
    """`prog` is already a command (it may hold spaces, e.g. "pingpull bench e2e"), argv is quoted."""
    return " ".join([prog, *(shlex.quote(a) for a in argv)])


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    if digits == 0 and abs(value) < 10 and value != int(value):
        return f"{value:,.1f}"
    return f"{value:,.{digits}f}"


# --- child processes speaking JSON lines ------------------------------------------------------------


class Child:
    """`python -m <module>` under trio: one JSON object per line each way, request/response."""

    def __init__(self, process: trio.Process, name: str, log_path: Path) -> None:
        self.process = process
        self.name = name
        self.log_path = log_path
        self._buffer = b""
        self._lock = trio.Lock()

    @classmethod
    async def start(
        cls,
        module: str,
        name: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> Child:
        log_path = log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", module, *args],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env={**os.environ, **(env or {})},
            )
        finally:
            log_file.close()
        return cls(process, name, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def _read_line(self) -> bytes:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(1 << 20)
            if not chunk:
                raise BenchError(f"{self.name} exited ({self.process.poll()}):\n{self.log_tail()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def request(self, message: Json, timeout_s: float = 60.0) -> Json:
        assert self.process.stdin is not None
        async with self._lock:
            await self.process.stdin.send_all(json.dumps(message).encode() + b"\n")
            with trio.move_on_after(timeout_s) as scope:
                reply: Json = json.loads(await self._read_line())
            if scope.cancelled_caught:
                raise BenchError(f"{self.name} did not answer {message.get('cmd')!r} in {timeout_s}s")
        if "error" in reply:
            raise BenchError(f"{self.name}: {reply['error']}\n{self.log_tail()}")
        return reply

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            if self.process.poll() is None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    assert self.process.stdin is not None
                    await self.process.stdin.aclose()
                with trio.move_on_after(10):
                    await self.process.wait()
                if self.process.poll() is None:
                    self.process.kill()
                    await self.process.wait()


class LineChannel:
    """The child's side: JSON lines on stdin/stdout, read and written from trio."""

    def __init__(self) -> None:
        self._in = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self._out: IO[str] = sys.stdout
        self._buffer = b""

    async def receive(self) -> Json | None:
        while b"\n" not in self._buffer:
            chunk = await self._in.receive_some(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: Json = json.loads(line)
        return message

    def send(self, message: Json) -> None:
        self._out.write(json.dumps(message, separators=(",", ":")) + "\n")
        self._out.flush()


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- `pingpull serve` as a child process ------------------------------------------------------------

_READY = re.compile(r"\bready\b(.*)")
_URL_FIELD = re.compile(r"(\w+)_url=(\S+)")


class PingpullServer:
    """`pingpull serve ...` (the real CLI), its URLs from the ready line, its pid for /proc."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("PINGPULL_")}
        child_env.update(env)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pingpull.cli", *args],
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env,
            )
        self.urls: dict[str, str] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_ready(self, timeout_s: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _READY.search(self.log_path.read_text(errors="replace"))
            if match:
                self.urls = {name: url.split(",")[0] for name, url in _URL_FIELD.findall(match.group(1))}
                return self.urls
            if self.process.poll() is not None:
                raise BenchError(f"pingpull serve exited with {self.process.returncode}:\n{self.log_tail()}")
            await trio.sleep(0.05)
        raise BenchError(f"pingpull serve was not ready in {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> str:
    """`pingpull <args>` to completion; its stdout, or BenchError with its stderr."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PINGPULL_")}
    child_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "pingpull.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=child_env,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"pingpull {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.log"))
