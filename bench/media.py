"""Benchmark: media downloads against nginx, uploads against the disk, on loopback (issue 4).

Run ``.venv/bin/python -m bench.media`` (``--help`` for the knobs; about 2-3 minutes). One run:

* starts the real ``pingpull serve content`` (embedded SQLite, local-disk media, registration open)
  as a child process, creates an account through ``POST /v1/accounts`` and uploads a
  `--size-mib` object of random bytes with ``POST /v1/media``;
* starts **nginx** (``/usr/sbin/nginx``, one worker, ``sendfile on``, access log off) from a generated
  config in a temporary prefix, its root pointing at the very object file pingpull stored, so both
  servers send identical bytes out of the page cache;
* **downloads** with one client for both servers, curl over HTTP/1.1: the whole object (MB/s), and
  `--range-requests` sequential 1 MiB ranges at varied offsets over one keep-alive connection
  (requests/s; curl's ``--next`` sections share one connection, checked with ``num_connects``);
* **uploads** the same bytes four ways, each timed by curl or the clock around it: ``POST /v1/media``;
  tus (one creation ``POST /v1/uploads``, then ``PATCH`` es of `--chunk-mib` with ``Upload-Offset``
  over one keep-alive connection); and two baselines measured in the same run: writing the bytes to a
  file in pingpull's data directory with ``fsync`` (the disk's own speed, what pingpull must also pay
  before answering 201) and an HTTP ``PUT`` to nginx's DAV module (an HTTP server receiving into a file,
  no fsync);
* checks the bytes: the sha256 of one whole download from each server and of the uploaded objects
  equals the source's; one range from each server equals the source slice;
* if pingpull is under `--goal` × nginx on a download measurement, profiles the server with py-spy
  while it serves that measurement again, and lists where the samples fall.

Every measurement runs a warm-up first, then `--repeats` rounds whose order alternates between the
servers (the machines are shared and noisy: ratios only compare numbers taken in the same run).
MB = 10^6 bytes, MiB = 2^20 bytes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench._gateway_support import (
    RESULTS_DIR,
    CliServer,
    ForeignLoad,
    PySpy,
    command_line,
    machine_info,
    median,
    output_arg,
    process_cpu_s,
    pyspy_executable,
    ratio,
    summarize_pyspy,
    write_report,
)

MIB: Final = 1024 * 1024
MB: Final = 1_000_000
NGINX: Final = "/usr/sbin/nginx"
CURL: Final = "curl"
PACKAGES: Final = ("quart", "quart-trio", "hypercorn", "h11", "trio")
RESULTS: Final = RESULTS_DIR / "media.md"
CONTENT_TYPE: Final = "application/octet-stream"
SEED: Final = 4


# ==================================================================================================
# small helpers


def spread(values: Sequence[float]) -> str:
    """min-max and the relative standard deviation, for a table cell."""
    if len(values) < 2:
        return "-"
    rsd = statistics.stdev(values) / statistics.mean(values) * 100
    return f"{min(values):,.0f}-{max(values):,.0f} (±{rsd:.0f}%)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def write_source(path: Path, size: int) -> str:
    """`size` pseudo-random bytes (incompressible, reproducible); their sha256 hex."""
    rng = random.Random(SEED)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = rng.randbytes(min(4 * MIB, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def read_slice(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as source:
        return os.pread(source.fileno(), length, start)


def post_json(url: str, payload: dict[str, str]) -> dict[str, str]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, str] = json.loads(response.read())
        return answer


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def nginx_version() -> str:
    result = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip().removeprefix("nginx version: ")


def curl_version() -> str:
    return subprocess.run([CURL, "--version"], capture_output=True, text=True, check=True).stdout.split("\n")[
        0
    ]


# ==================================================================================================
# the client: curl, the same binary and options for both servers


@dataclass
class Transfer:
    code: int
    size: int
    seconds: float
    connects: int
    speed_bps: float  # curl's speed_download or speed_upload, bytes/s
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


WRITE_OUT: Final = (
    "\\n@@ %{http_code} %{size_download} %{size_upload} %{time_total} %{num_connects} "
    "%{speed_download} %{speed_upload}\\n"
)


def run_curl(config: str, *, capture_body: bool = False) -> list[Transfer]:
    """One curl process reading `config` (sections separated by ``next``); one Transfer per URL."""
    argv = [CURL, "--silent", "--show-error", "--http1.1", "--config", "-"]
    result = subprocess.run(argv, input=config.encode(), capture_output=True, check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"curl failed rc={result.returncode}: {result.stderr.decode(errors='replace')}")
    transfers: list[Transfer] = []
    body_lines: list[str] = []
    for line in result.stdout.decode(errors="replace").splitlines():
        if line.startswith("@@ "):
            code, down, up, total, connects, speed_down, speed_up = line[3:].split()
            uploaded = int(up) > 0
            transfers.append(
                Transfer(
                    code=int(code),
                    size=int(up) if uploaded else int(down),
                    seconds=float(total),
                    connects=int(connects),
                    speed_bps=float(speed_up) if uploaded else float(speed_down),
                    body="\n".join(body_lines) if capture_body else "",
                )
            )
            body_lines = []
        elif line:
            body_lines.append(line)
    return transfers


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def section(
    url: str, *, headers: Sequence[str] = (), output: str | None = "/dev/null", **options: str
) -> str:
    lines = [f"url = {_quote(url)}", f"write-out = {_quote(WRITE_OUT)}"]
    if output is not None:
        lines.append(f"output = {_quote(output)}")
    lines += [f"header = {_quote(h)}" for h in headers]
    lines += [f"{name.replace('_', '-')} = {_quote(value)}" for name, value in options.items()]
    return "\n".join(lines) + "\n"


def sections(parts: Sequence[str]) -> str:
    return "next\n".join(parts)


@dataclass
class Server:
    name: str
    base: str
    path: str  # the object's URL path
    auth: tuple[str, ...]  # headers
    pid: int  # the process doing the work (pingpull, or nginx's worker)

    @property
    def url(self) -> str:
        return self.base + self.path


def get_whole(server: Server) -> Transfer:
    (transfer,) = run_curl(section(server.url, headers=server.auth))
    if transfer.code != 200:
        raise RuntimeError(f"{server.name}: GET answered {transfer.code}")
    return transfer


def get_ranges(server: Server, offsets: Sequence[int], length: int) -> list[Transfer]:
    config = sections(
        [section(server.url, headers=server.auth, range=f"{start}-{start + length - 1}") for start in offsets]
    )
    transfers = run_curl(config)
    bad = [t for t in transfers if t.code != 206 or t.size != length]
    if len(transfers) != len(offsets) or bad:
        raise RuntimeError(f"{server.name}: range answers {bad[:3]} ({len(transfers)}/{len(offsets)})")
    return transfers


def download_sha256(server: Server) -> str:
    argv = [
        CURL,
        "--silent",
        "--show-error",
        "--http1.1",
        "--fail",
        *[arg for h in server.auth for arg in ("-H", h)],
    ]
    digest = hashlib.sha256()
    with subprocess.Popen([*argv, server.url], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(4 * MIB):
            digest.update(chunk)
    if proc.returncode != 0:
        raise RuntimeError(f"{server.name}: verification download failed rc={proc.returncode}")
    return digest.hexdigest()


def download_range(server: Server, start: int, length: int, into: Path) -> bytes:
    (transfer,) = run_curl(
        section(server.url, headers=server.auth, output=str(into), range=f"{start}-{start + length - 1}")
    )
    if transfer.code != 206:
        raise RuntimeError(f"{server.name}: range answered {transfer.code}")
    return into.read_bytes()


# ==================================================================================================
# nginx


NGINX_CONF: Final = """\
{user}worker_processes 1;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    client_max_body_size 0;
    client_body_temp_path {prefix}/put-tmp;
    server {{
        listen 127.0.0.1:{port};
        location /objects/ {{
            root {objects_parent};
        }}
        location /put/ {{
            root {prefix};
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"""


class Nginx:
    """nginx from a generated config: GET of the stored object, and PUT (DAV) into its prefix."""

    def __init__(self, prefix: Path, objects_dir: Path) -> None:
        self.prefix = prefix
        self.port = free_port()
        (prefix / "put").mkdir(parents=True)
        (prefix / "put-tmp").mkdir()
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read pingpull's 0700 dirs
        conf = NGINX_CONF.format(user=user, prefix=prefix, port=self.port, objects_parent=objects_dir.parent)
        (prefix / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(prefix),
                "-e",
                str(prefix / "error.log"),
                "-c",
                str(prefix / "nginx.conf"),
                "-g",
                f"daemon off; pid {prefix}/nginx.pid;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(prefix / "stderr.log", "wb"),  # noqa: SIM115 - lives as long as nginx
        )
        wait_for_port(self.port)
        workers = child_pids(self.proc.pid)
        if len(workers) != 1:
            raise RuntimeError(f"nginx workers: {workers}")
        self.worker_pid = workers[0]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ==================================================================================================
# uploads


@dataclass
class Uploads:
    source: Path
    size: int
    sha256: str
    chunk_files: list[tuple[int, Path]]  # (offset, file) of the tus chunks
    pingpull: str
    token: str
    nginx: Nginx
    data_dir: Path
    objects_dir: Path
    last_ids: dict[str, str] = field(default_factory=dict)

    @property
    def auth(self) -> list[str]:
        return [f"Authorization: Bearer {self.token}"]

    def fsync_file(self) -> float:
        """The baseline: the same bytes into a new file in the data dir, fsync, close."""
        target = self.data_dir / "bench-baseline.bin"
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        started = time.perf_counter()
        with open(self.source, "rb", buffering=0) as src, open(target, "xb", buffering=0) as out:
            buffer = bytearray(MIB)
            view = memoryview(buffer)
            while n := src.readinto(buffer):
                out.write(view[:n])
            os.fsync(out.fileno())
        elapsed = time.perf_counter() - started
        target.unlink()
        return elapsed

    def nginx_put(self) -> float:
        url = f"{self.nginx.base}/put/object.bin"
        (transfer,) = run_curl(section(url, upload_file=str(self.source), headers=["Expect:"]))
        if transfer.code not in (201, 204) or transfer.size != self.size:
            raise RuntimeError(f"nginx PUT answered {transfer.code} after {transfer.size} bytes")
        return transfer.seconds

    def raw_post(self) -> float:
        headers = [*self.auth, f"Content-Type: {CONTENT_TYPE}", "Expect:"]
        (transfer,) = run_curl(
            section(
                f"{self.pingpull}/v1/media",
                headers=headers,
                output=None,
                upload_file=str(self.source),
                request="POST",
            ),
            capture_body=True,
        )
        if transfer.code != 201:
            raise RuntimeError(f"POST /v1/media answered {transfer.code}: {transfer.body[:300]}")
        answer = json.loads(transfer.body)
        if answer["sha256"] != self.sha256 or answer["size"] != self.size:
            raise RuntimeError(f"POST /v1/media stored {answer}, not sha256 {self.sha256}")
        self.last_ids["raw"] = answer["media_id"]
        return transfer.seconds

    def tus(self) -> tuple[float, int]:
        """Creation, then every chunk's PATCH in one curl (one connection); seconds from the creation
        request's start to the last PATCH's answer, and how many connections curl opened."""
        metadata = "filetype " + base64.b64encode(CONTENT_TYPE.encode()).decode()
        tus = ["Tus-Resumable: 1.0.0"]
        started = time.perf_counter()
        request = urllib.request.Request(
            f"{self.pingpull}/v1/uploads",
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(self.size),
                "Upload-Metadata": metadata,
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            location = response.headers["Location"]
        upload_id = location.rstrip("/").rsplit("/", 1)[1]
        patches = [
            section(
                location,
                headers=[
                    *self.auth,
                    *tus,
                    "Content-Type: application/offset+octet-stream",
                    f"Upload-Offset: {offset}",
                    "Expect:",
                ],
                upload_file=str(path),
                request="PATCH",
            )
            for offset, path in self.chunk_files
        ]
        transfers = run_curl(sections(patches))
        elapsed = time.perf_counter() - started
        bad = [t for t in transfers if t.code != 204]
        if bad or len(transfers) != len(self.chunk_files):
            raise RuntimeError(f"tus PATCH answers: {[t.code for t in transfers]}")
        self.last_ids["tus"] = upload_id
        return elapsed, sum(t.connects for t in transfers)

    def object_path(self, media_id: str) -> Path:
        return self.objects_dir / media_id[:2] / media_id


# ==================================================================================================
# the run


@dataclass
class DownloadResult:
    name: str  # "whole" or "range"
    unit: str
    pingpull: list[float]
    nginx: list[float]
    cpu_per_gib: dict[str, float]  # server CPU seconds per GiB sent, over the measured rounds
    connects: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return median(self.pingpull) / median(self.nginx)


@dataclass
class UploadResult:
    name: str
    mbps: list[float]
    notes: str = ""


@dataclass
class Floor:
    """The fixed cost of a request: 1-byte ranges (both servers), and pingpull's /healthz."""

    label: str
    rps: dict[str, float]
    cpu_ms: dict[str, float]


def measure_floor(servers: Sequence[Server], offsets: Sequence[int]) -> list[Floor]:
    floors = []
    tiny = Floor("1-byte ranges of the object", {}, {})
    for server in servers:
        get_ranges(server, offsets[:20], 1)
        cpu0 = process_cpu_s(server.pid)
        transfers = get_ranges(server, offsets, 1)
        tiny.cpu_ms[server.name] = (process_cpu_s(server.pid) - cpu0) / len(transfers) * 1000
        tiny.rps[server.name] = len(transfers) / sum(t.seconds for t in transfers)
    floors.append(tiny)
    pingpull = servers[0]
    health = Floor("`GET /healthz` (no auth, no database)", {}, {})
    config = sections([section(pingpull.base + "/healthz") for _ in offsets])
    run_curl(config)
    cpu0 = process_cpu_s(pingpull.pid)
    transfers = run_curl(config)
    health.cpu_ms["pingpull"] = (process_cpu_s(pingpull.pid) - cpu0) / len(transfers) * 1000
    health.rps["pingpull"] = len(transfers) / sum(t.seconds for t in transfers)
    floors.append(health)
    return floors


def measure_downloads(
    servers: Sequence[Server], args: argparse.Namespace, offsets: Sequence[int]
) -> tuple[DownloadResult, DownloadResult]:
    size = args.size_mib * MIB
    range_bytes = args.range_kib * 1024
    whole: dict[str, list[float]] = {s.name: [] for s in servers}
    rps: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu_whole = dict.fromkeys(whole, 0.0)
    cpu_range = dict.fromkeys(whole, 0.0)
    connects = dict.fromkeys(whole, 0)
    for server in servers:  # warm-up: page cache, first-use paths
        get_whole(server)
        get_ranges(server, offsets[:20], range_bytes)
    for round_no in range(args.repeats):
        order = servers if round_no % 2 == 0 else list(reversed(servers))
        for server in order:
            cpu0 = process_cpu_s(server.pid)
            transfer = get_whole(server)
            cpu_whole[server.name] += process_cpu_s(server.pid) - cpu0
            if transfer.size != size:
                raise RuntimeError(f"{server.name}: {transfer.size} bytes, not {size}")
            whole[server.name].append(size / transfer.seconds / MB)
        for server in order:
            cpu0 = process_cpu_s(server.pid)
            transfers = get_ranges(server, offsets, range_bytes)
            cpu_range[server.name] += process_cpu_s(server.pid) - cpu0
            rps[server.name].append(len(transfers) / sum(t.seconds for t in transfers))
            connects[server.name] = max(connects[server.name], sum(t.connects for t in transfers))
    gib_whole = args.repeats * size / 1024**3
    gib_range = args.repeats * len(offsets) * range_bytes / 1024**3
    return (
        DownloadResult(
            "whole",
            "MB/s",
            whole["pingpull"],
            whole["nginx"],
            {k: v / gib_whole for k, v in cpu_whole.items()},
        ),
        DownloadResult(
            "range",
            "requests/s",
            rps["pingpull"],
            rps["nginx"],
            {k: v / gib_range for k, v in cpu_range.items()},
            connects,
            {k: v / (args.repeats * len(offsets)) * 1000 for k, v in cpu_range.items()},
        ),
    )


def measure_uploads(uploads: Uploads, args: argparse.Namespace) -> tuple[list[UploadResult], int]:
    size = uploads.size
    trials: list[tuple[str, Callable[[], float]]] = [
        ("file + fsync (baseline)", uploads.fsync_file),
        ("nginx DAV PUT (baseline)", uploads.nginx_put),
        ("POST /v1/media", uploads.raw_post),
    ]
    tus_connects = 0

    def tus() -> float:
        nonlocal tus_connects
        elapsed, tus_connects = uploads.tus()
        return elapsed

    trials.append((f"tus, {args.chunk_mib} MiB PATCHes", tus))
    results = {name: UploadResult(name, []) for name, _ in trials}
    for _, run in trials:  # warm-up
        run()
    for round_no in range(args.repeats):
        shift = round_no % len(trials)
        for name, run in trials[shift:] + trials[:shift]:
            seconds = run()
            results[name].mbps.append(size / seconds / MB)
    return list(results.values()), tus_connects


# Where a sample is counted: the first category one of whose markers is in one of its frames.
CATEGORIES: Final = (
    (
        "database read: the asyncio bridge thread (SQLAlchemy on aiosqlite)",
        ("ThreadLoopBridge._thread_main",),
    ),
    ("database read: aiosqlite's own worker thread (sqlite3)", ("_connection_worker_thread (aiosqlite",)),
    ("file reads: trio worker threads (os.pread, open, close)", ("WorkerThread._work",)),
    (
        "trio thread: handing the query to the bridge (pingpull/aio.py)",
        ("ThreadLoopBridge.run (pingpull/aio",),
    ),
    ("trio thread: starting/finishing worker-thread jobs", ("to_thread_run_sync", "start_thread_soon")),
    ("trio thread: socket send (send_all)", ("SocketStream.send_all", "_nonblocking_helper")),
    ("trio thread: waiting in epoll", ("get_events",)),
    ("trio thread: the media route (content_svc/routes/media.py)", ("(content_svc/routes/media.py",)),
    ("trio thread: rest of quart / hypercorn / h11", ("handle_request", "hypercorn", "h11")),
)


def categorize(path: Path) -> list[tuple[str, float]]:
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        total += int(count_text)
        name = next((label for label, markers in CATEGORIES if any(m in stack for m in markers)), "other")
        counts[name] = counts.get(name, 0) + int(count_text)
    return [(name, n / total) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])] if total else []


@dataclass
class ProfileReport:
    measurement: str
    seconds: float
    samples: int
    self_lines: list[tuple[str, float]]
    categories: list[tuple[str, float]]


def profile_download(
    pingpull: Server, measurement: str, args: argparse.Namespace, offsets: Sequence[int], out_dir: Path
) -> ProfileReport:
    raw = out_dir / f"profile-{measurement}.txt"
    spy = PySpy(pingpull.pid, raw, rate_hz=250)
    started = time.monotonic()
    try:
        for _ in range(2):
            if measurement == "whole":
                get_whole(pingpull)
            else:
                get_ranges(pingpull, offsets, args.range_kib * 1024)
    finally:
        spy.stop()
    seconds = time.monotonic() - started
    summary = summarize_pyspy(raw, focus="", limit=args.profile_top)
    return ProfileReport(measurement, seconds, summary.samples, summary.self_lines, categorize(raw))


# ==================================================================================================
# report


def render(
    args: argparse.Namespace,
    downloads: tuple[DownloadResult, DownloadResult],
    uploads: list[UploadResult],
    tus_connects: int,
    floors: list[Floor],
    foreign: dict[str, float],
    checks: list[str],
    profiles: list[ProfileReport],
    extra: list[str],
    wall_s: float,
) -> str:
    whole, ranged = downloads
    size_mib = args.size_mib
    lines = [
        "# Media: downloads against nginx, uploads against the disk",
        "",
        f"`{command_line('bench.media')}`",
        "",
        f"One {size_mib} MiB object of random bytes, stored by `POST /v1/media` on the local-disk store of a "
        "real `pingpull serve content` (embedded SQLite; one process); nginx serves the very file pingpull "
        "stored (root at pingpull's `media/objects`), one worker, `sendfile on`, access log off. Loopback, "
        "HTTP/1.1, one client for both servers: curl, output to /dev/null. Every measurement: a warm-up, "
        f"then {args.repeats} rounds alternating the servers' order; medians, with min-max and the "
        f"relative standard deviation across rounds. MB = 10^6 bytes. Wall time {wall_s:.0f} s.",
        "",
        *machine_info(PACKAGES, extra),
        *(
            [f"- pingpull settings changed for this run: {', '.join(args.server_env)}"]
            if args.server_env
            else []
        ),
        "",
        "## 1. Downloads (GET, page cache, HTTP/1.1)",
        "",
        "| measurement | pingpull | nginx | **pingpull / nginx** | pingpull per round | nginx per round "
        "| server CPU s per GiB sent: pingpull / nginx |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for result, label in (
        (whole, f"whole {size_mib} MiB object, MB/s"),
        (ranged, f"{args.range_kib} KiB ranges, requests/s ({args.range_requests} sequential per round)"),
    ):
        lines.append(
            f"| {label} | {median(result.pingpull):,.0f} | {median(result.nginx):,.0f} | "
            f"**{result.ratio:.2f}×** | {spread(result.pingpull)} | {spread(result.nginx)} | "
            f"{result.cpu_per_gib['pingpull']:.2f} / {result.cpu_per_gib['nginx']:.2f} |"
        )
    range_mbps = {
        name: median(values) * args.range_kib * 1024 / MB
        for name, values in (("pingpull", ranged.pingpull), ("nginx", ranged.nginx))
    }
    lines += [
        "",
        f"The range rounds moved {range_mbps['pingpull']:,.0f} MB/s (pingpull) and "
        f"{range_mbps['nginx']:,.0f} MB/s (nginx); connections opened per round of "
        f"{args.range_requests} requests: pingpull {ranged.connects.get('pingpull', 0)}, nginx "
        f"{ranged.connects.get('nginx', 0)} (1 = every request reused the keep-alive connection). "
        "Range offsets: pseudo-random, the same list for both servers. Server CPU per range request: "
        f"pingpull {ranged.cpu_ms_per_request.get('pingpull', 0):.2f} ms, nginx "
        f"{ranged.cpu_ms_per_request.get('nginx', 0):.2f} ms.",
        "",
        f"The fixed cost of one request (one round of {args.range_requests} sequential requests on one "
        "connection, after a warm-up; CPU is the server process's user + system time):",
        "",
        "| requests | pingpull req/s | nginx req/s | pingpull CPU ms/request | nginx CPU ms/request |",
        "|---|---:|---:|---:|---:|",
    ]
    for floor in floors:
        lines.append(
            f"| {floor.label} | {floor.rps.get('pingpull', 0):,.0f} | "
            + (f"{floor.rps['nginx']:,.0f}" if "nginx" in floor.rps else "-")
            + f" | {floor.cpu_ms.get('pingpull', 0):.2f} | "
            + (f"{floor.cpu_ms['nginx']:.2f}" if "nginx" in floor.cpu_ms else "-")
            + " |"
        )
    lines += [
        "",
        f"Other processes on this shared machine used {foreign['downloads']:.2f} CPUs on average during "
        f"the downloads and {foreign['uploads']:.2f} during the uploads (of {os.cpu_count()}).",
        "",
    ]
    goal = args.goal
    for result, label in ((whole, "whole object"), (ranged, "1 MiB ranges")):
        verdict = "met" if result.ratio >= goal else "**not met**"
        lines.append(f"- Goal pingpull ≥ {goal:g}× nginx, {label}: {verdict} ({result.ratio:.2f}×).")
    lines += ["", "## 2. Uploads", ""]
    by_name = {u.name: u for u in uploads}
    fsync_base = median(by_name["file + fsync (baseline)"].mbps)
    put_base = median(by_name["nginx DAV PUT (baseline)"].mbps)
    lines += [
        f"{size_mib} MiB from a file in the page cache. The fsync baseline copies it into a new file in "
        "pingpull's data dir (1 MiB writes) and fsyncs it; pingpull fsyncs its object before its 201 too. "
        "The nginx PUT baseline is curl → nginx DAV (body to a temp file, rename; no fsync). Upload "
        "times are curl's `time_total` (tus: the clock around the creation request and the one curl "
        f"doing the PATCHes; {tus_connects} connection(s) opened for all PATCHes of an upload).",
        "",
        "| upload | MB/s | vs file + fsync | vs nginx PUT | per round |",
        "|---|---:|---:|---:|---|",
    ]
    for upload in uploads:
        value = median(upload.mbps)
        lines.append(
            f"| {upload.name} | **{value:,.0f}** | {ratio(value, fsync_base)} | {ratio(value, put_base)} | "
            f"{spread(upload.mbps)} |"
        )
    lines += ["", "## Checks", "", *[f"- {c}" for c in checks], ""]
    if profiles:
        lines += [
            "## Where pingpull's download time goes (py-spy)",
            "",
            f"Run because a download measurement was under {goal:g}× nginx. py-spy record (250 Hz, "
            "active samples only, all threads) on the pingpull process while it served that measurement "
            "twice more.",
            "",
        ]
        for profile in profiles:
            lines += [
                f"### {profile.measurement}: {profile.samples:,} samples in {profile.seconds:.1f} s",
                "",
                "| share of samples | where (every sample in exactly one row) |",
                "|---:|---|",
                *[f"| {share:.1%} | {name} |" for name, share in profile.categories],
                "",
                "| self share | innermost frame (function (file:line): source) |",
                "|---:|---|",
                *[f"| {share:.1%} | `{name}` |" for name, share in profile.self_lines],
                "",
            ]
    if profiles:
        lines += suggestions(profiles, floors, downloads)
    return "\n".join(lines).rstrip() + "\n"


def suggestions(
    profiles: list[ProfileReport], floors: list[Floor], downloads: tuple[DownloadResult, DownloadResult]
) -> list[str]:
    """What the profiles point at, with this run's numbers (content_svc is not this benchmark's to change)."""

    def share(profile: ProfileReport, prefix: str) -> float:
        return sum(v for name, v in profile.categories if name.startswith(prefix))

    lines = ["## Suggested server changes (from this run's profiles)", ""]
    by_name = {p.measurement: p for p in profiles}
    tiny, health = floors
    if "range" in by_name:
        db = share(by_name["range"], "database read") + share(by_name["range"], "trio thread: handing")
        fixed = (
            f"A 1-byte range costs pingpull {tiny.cpu_ms['pingpull']:.1f} ms of CPU against "
            f"{health.cpu_ms['pingpull']:.1f} ms for `/healthz`, and a 1 MiB range is served at "
            f"{median(downloads[1].pingpull):,.0f} req/s against {tiny.rps['pingpull']:,.0f} req/s for "
            "1-byte ranges: the fixed cost per request, not the bytes, sets the rate."
        )
        if db >= 0.05:
            lines.append(
                f"- **Ranges: the per-request database read.** {db:.0%} of the samples while serving "
                f"ranges are the `records.readable_media` read. {fixed} Check that the access cache "
                "(`media.access_cache_ttl_s`) is on: a client seeking through a video should pay the "
                "database once per TTL, not per range."
            )
        else:
            lines.append(
                f"- **Ranges: the HTTP stack's cost per request.** The database read is {db:.0%} of the "
                f"samples (the access cache answers). {fixed} What is left is hypercorn, quart-trio and "
                'quart per request (docs/architecture.md, "Per-request cost"): a thinner path for '
                "media GETs than a Quart route is the change that could move this ratio."
            )
    if "whole" in by_name:
        whole = by_name["whole"]
        lines.append(
            "- **Whole objects: one thread hop per chunk, read and send in lockstep.** "
            f"{share(whole, 'file reads') + share(whole, 'trio thread: starting'):.0%} of the samples are "
            "`trio.to_thread.run_sync(os.pread)` per `read_chunk_bytes` chunk and its hand-offs, "
            f"{share(whole, 'trio thread: socket send'):.0%} the socket send; pingpull used "
            f"{downloads[0].cpu_per_gib['pingpull']:.2f} CPU s per GiB at "
            f"{median(downloads[0].pingpull):,.0f} MB/s, i.e. under one CPU: it waits more than it "
            "works. `LocalBlobStore.read` reads the next chunk only after the previous one was sent. "
            "Change: read one chunk ahead (start the next `pread` in a worker thread while the current "
            "chunk is being sent), and/or send from the file without the Python copy "
            "(`os.sendfile` on the trio socket when it is writable; hypercorn would need to expose the "
            "socket, e.g. the ASGI zero-copy send extension, so that is the larger change)."
        )
    return [*lines, ""]


@contextlib.contextmanager
def pingpull_server(data_dir: Path, quota_bytes: int, extra_env: Sequence[str] = ()) -> Iterator[CliServer]:
    server = CliServer(
        ["content", "--data-dir", str(data_dir), "--content-port", "0"],
        env={
            "PINGPULL_CONTENT_REGISTRATION": "open",
            # The benchmark uploads the object ~(2 × repeats + 3) times within a minute or two.
            "PINGPULL_MEDIA_UPLOAD_QUOTA_BYTES": str(quota_bytes),
            "PINGPULL_MEDIA_UPLOAD_BURST": "1000",
            **dict(item.split("=", 1) for item in extra_env),
        },
        log_path=data_dir.parent / "serve.log",
    )
    try:
        yield server
    finally:
        server.close()


def run(args: argparse.Namespace) -> str:
    started = time.monotonic()
    size = args.size_mib * MIB
    range_bytes = args.range_kib * 1024
    workdir = Path(tempfile.mkdtemp(prefix="bench-media-", dir=args.workdir))
    checks: list[str] = []
    profiles: list[ProfileReport] = []
    try:
        source = workdir / "source.bin"
        sha256 = write_source(source, size)
        chunk_bytes = args.chunk_mib * MIB
        chunk_files = []
        with open(source, "rb") as src:
            for index, offset in enumerate(range(0, size, chunk_bytes)):
                path = workdir / "chunks" / f"{index:05d}"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(os.pread(src.fileno(), chunk_bytes, offset))
                chunk_files.append((offset, path))
        data_dir = workdir / "data"
        uploads_total = (2 * (args.repeats + 2) + 2) * size
        with pingpull_server(data_dir, max(uploads_total, 4 * 1024**3), args.server_env) as cli:
            base = cli.urls["content_url"]
            account = post_json(f"{base}/v1/accounts", {"handle": "bench_media"})
            objects_dir = data_dir / "media" / "objects"
            nginx = Nginx(workdir / "nginx", objects_dir)
            try:
                uploads = Uploads(
                    source, size, sha256, chunk_files, base, account["token"], nginx, data_dir, objects_dir
                )
                uploads.raw_post()
                media_id = uploads.last_ids["raw"]
                checks.append(f"`POST /v1/media` answered sha256 {sha256[:16]}… = the source's")
                auth = (f"Authorization: Bearer {account['token']}",)
                pingpull = Server("pingpull", base, f"/v1/media/{media_id}", auth, cli.pid)
                nginx_server = Server(
                    "nginx", nginx.base, f"/objects/{media_id[:2]}/{media_id}", auth, nginx.worker_pid
                )
                servers = [pingpull, nginx_server]
                for server in servers:
                    got = download_sha256(server)
                    if got != sha256:
                        raise RuntimeError(f"{server.name}: downloaded sha256 {got} != {sha256}")
                    checks.append(f"whole download from {server.name}: sha256 = the upload's")
                rng = random.Random(SEED)
                offsets = [rng.randrange(0, size - range_bytes) for _ in range(args.range_requests)]
                for server in servers:
                    got_bytes = download_range(server, offsets[0], range_bytes, workdir / "range.bin")
                    if got_bytes != read_slice(source, offsets[0], range_bytes):
                        raise RuntimeError(f"{server.name}: range bytes differ from the source")
                    checks.append(
                        f"range {offsets[0]}-{offsets[0] + range_bytes - 1} from {server.name}: "
                        "bytes = the source's"
                    )
                own = [cli.pid, nginx.proc.pid, nginx.worker_pid]
                probe = ForeignLoad()
                probe.start()
                downloads = measure_downloads(servers, args, offsets)
                floors = measure_floor(servers, offsets)
                foreign = {"downloads": probe.stop(own)}
                probe.start()
                upload_results, tus_connects = measure_uploads(uploads, args)
                foreign["uploads"] = probe.stop(own)
                for kind, label in (("raw", "`POST /v1/media`"), ("tus", "tus")):
                    stored = file_sha256(uploads.object_path(uploads.last_ids[kind]))
                    if stored != sha256:
                        raise RuntimeError(f"{kind}: stored object sha256 {stored} != {sha256}")
                    checks.append(f"last {label} upload: the stored object's sha256 = the source's")
                if args.profile == "always" or (
                    args.profile == "auto" and any(d.ratio < args.goal for d in downloads)
                ):
                    if pyspy_executable() is None:
                        checks.append("py-spy not installed: no profile")
                    else:
                        for result in downloads:
                            if args.profile == "always" or result.ratio < args.goal:
                                profiles.append(
                                    profile_download(pingpull, result.name, args, offsets, workdir)
                                )
            finally:
                nginx.close()
        extra = [
            f"- nginx: {nginx_version()} (`{NGINX}`), 1 worker process",
            f"- client: {curl_version()}",
            "- storage: the data dir is on "
            + subprocess.run(
                ["df", "--output=source,fstype", str(workdir)], capture_output=True, text=True, check=False
            )
            .stdout.splitlines()[-1]
            .strip(),
        ]
        return render(
            args,
            downloads,
            upload_results,
            tus_connects,
            floors,
            foreign,
            checks,
            profiles,
            extra,
            time.monotonic() - started,
        )
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200, help="object size, MiB (200)")
    parser.add_argument("--range-kib", type=int, default=1024, help="range size, KiB (1024)")
    parser.add_argument("--range-requests", type=int, default=200, help="range requests per round (200)")
    parser.add_argument("--chunk-mib", type=int, default=5, help="tus PATCH size, MiB (5)")
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds per measurement (5)")
    parser.add_argument("--goal", type=float, default=0.5, help="goal: pingpull ≥ goal × nginx (0.5)")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="py-spy the server (auto: if under goal)",
    )
    parser.add_argument("--profile-top", type=int, default=12, help="rows per profile table (12)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="PINGPULL_X=V",
        help="extra setting for pingpull serve, for ablations (repeatable)",
    )
    parser.add_argument("--workdir", default=None, help="where the temporary data goes (system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--output", default=str(RESULTS), help="report file ('-': stdout only)")
    args = parser.parse_args(argv)
    args.output = output_arg(args.output)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    write_report(run(args), args.output)


if __name__ == "__main__":
    main()
