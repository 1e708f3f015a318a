"""Benchmark: what one HTTP request costs the content service in CPU.

Run ``.venv/bin/python -m bench.request_cost`` (``--help`` for the knobs). It starts the real
``pingpull serve content`` (embedded SQLite, local-disk media), creates an account, uploads a small
media object, then, for each request below, sends `--requests` sequential keep-alive requests from a
raw socket in this process (a new connection every 500 requests, under hypercorn's per-connection
limit) and reads the server process's user + system CPU from /proc before and after. Each
measurement is repeated `--rounds` times; the best round is reported, because on a shared VM
interference only ever adds CPU.

* ``GET /healthz``: no auth, no database; the HTTP stack's floor.
* ``GET /v1/inbox?after=0``: a short poll of an empty inbox: auth, query validation, one database
  read, response validation.
* ``GET /v1/media/{id}`` with ``Range: bytes=0-0``: auth, the access cache, one 1-byte read.

docs/architecture.md ("Per-request cost") quotes its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench._gateway_support import (
    RESULTS_DIR,
    CliServer,
    command_line,
    host_port,
    machine_info,
    output_arg,
    process_cpu_s,
    write_report,
)

_RECONNECT_EVERY = 500  # hypercorn closes a keep-alive connection after 1,000 requests


@dataclass(frozen=True)
class Probe:
    label: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Measured:
    probe: Probe
    cpu_us: list[float]
    rate: list[float]


class KeepAliveClient:
    """Sequential HTTP/1.1 requests on one socket, reading exactly one Content-Length answer each."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock = socket.create_connection(self.address)
        self.sent = 0

    def get(self, path: str, headers: dict[str, str]) -> int:
        if self.sent and self.sent % _RECONNECT_EVERY == 0:
            self.sock.close()
            self.sock = socket.create_connection(self.address)
        self.sent += 1
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{head}\r\n".encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += self._recv()
        answer, _, body = buffer.partition(b"\r\n\r\n")
        lines = answer.split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += self._recv()
        return int(lines[0].split()[1])

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def _post_json(url: str, body: object, headers: dict[str, str] | None = None) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        result: dict[str, object] = json.load(answer)
    return result


def _upload(url: str, token: str) -> str:
    request = urllib.request.Request(
        url + "/v1/media",
        os.urandom(64 * 1024),
        {"Content-Type": "image/jpeg", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return str(json.load(answer)["media_id"])


def measure(server: CliServer, client: KeepAliveClient, probe: Probe, requests: int, rounds: int) -> Measured:
    expected = 206 if "Range" in probe.headers else 200
    for _ in range(min(200, requests)):  # warm-up: caches, compiled statements
        if (status := client.get(probe.path, probe.headers)) != expected:
            raise RuntimeError(f"{probe.label}: answered {status}, expected {expected}")
    cpu_us: list[float] = []
    rate: list[float] = []
    for _ in range(rounds):
        cpu_before, started = process_cpu_s(server.pid), time.perf_counter()
        for _ in range(requests):
            client.get(probe.path, probe.headers)
        elapsed = time.perf_counter() - started
        cpu_us.append((process_cpu_s(server.pid) - cpu_before) / requests * 1e6)
        rate.append(requests / elapsed)
    return Measured(probe, cpu_us, rate)


def run(args: argparse.Namespace) -> str:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pingpull-request-cost-") as work:
        data_dir = Path(work) / "data"
        server = CliServer(
            ["content", "--data-dir", str(data_dir), "--content-port", "0"],
            env={"PINGPULL_CONTENT_REGISTRATION": "open"},
            log_path=Path(work) / "serve.log",
        )
        try:
            base = server.urls["content_url"].split(",")[0]
            token = str(_post_json(base + "/v1/accounts", {"handle": "bench"})["token"])
            media_id = _upload(base, token)
            auth = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            probes = [
                Probe("`GET /healthz` (no auth, no database)", "/healthz", {}),
                Probe("`GET /v1/inbox?after=0` (empty inbox: auth, one read)", "/v1/inbox?after=0", auth),
                Probe(
                    "`GET /v1/media/{id}`, `Range: bytes=0-0` (auth, access cache, 1-byte read)",
                    f"/v1/media/{media_id}",
                    {**auth, "Range": "bytes=0-0"},
                ),
            ]
            client = KeepAliveClient(*host_port(base))
            try:
                results = [measure(server, client, probe, args.requests, args.rounds) for probe in probes]
            finally:
                client.close()
        finally:
            server.close()
    lines = [
        "# Content service: CPU per request",
        "",
        f"`{command_line('bench.request_cost')}`",
        "",
        f"The real `pingpull serve content` (embedded SQLite, one process); {args.requests:,} sequential "
        f"keep-alive HTTP/1.1 requests per round from one raw socket, {args.rounds} rounds after a "
        "warm-up; server CPU (user + system, /proc) per request, best round (interference only adds). "
        f"Wall time {time.monotonic() - started:.0f} s.",
        "",
        *machine_info(["hypercorn", "quart", "quart-trio", "quart-schema", "pydantic", "SQLAlchemy", "trio"]),
        "",
        "| request | µs CPU, best round | all rounds | requests/s, best round |",
        "|---|---:|---|---:|",
    ]
    for result in results:
        rounds = " / ".join(f"{v:,.0f}" for v in result.cpu_us)
        lines.append(
            f"| {result.probe.label} | {min(result.cpu_us):,.0f} | {rounds} | {max(result.rate):,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1500, help="requests per round (1500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per request kind (3)")
    parser.add_argument(
        "--output",
        type=output_arg,
        default=RESULTS_DIR / "request_cost.md",
        help="report file ('-' for stdout only)",
    )
    args = parser.parse_args()
    write_report(run(args), args.output)


if __name__ == "__main__":
    main()
