"""`pingpull bench protocols`: run the scenario for every strategy and report.

1. Seed once: D device accounts and a sender with a direct conversation to each (`scenario.seed`),
   while a byte-counting proxy per strategy (its own process, two ports per device) starts.
2. Per strategy, a fresh `pingpull serve` (embedded: SQLite, in-memory bus) on its own copy of the
   seeded data directory, behind its proxy. Set-up is not measured, so it runs in parallel.
3. Idle, all strategies at once: each strategy's D devices connect (their own process per strategy),
   then the idle windows open together: `--idle` seconds (25: each device's first 20-25 s heartbeat
   falls inside), or two polling intervals for short polling, whose heartbeat is its poll. Bytes,
   requests and wake-ups do not depend on what else runs, and CPU is read per server process, so the
   windows share the wall clock (the whole run has to fit in five minutes).
4. Messages, one strategy at a time (short polling first, as soon as its window closes): the sender
   (this process, straight to the content port) posts `--messages` messages at `--rate` per second
   to random devices of that strategy, and the phase ends when every message is in its device's
   hands. The fleets not measured yet stay connected and idle meanwhile; a measured fleet and its
   server are stopped. Delivery completeness is checked (a lost or duplicated message fails the run
   loudly).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from bench.protocols.common import (
    RESULTS_DIR,
    BenchError,
    Child,
    Json,
    LoadMeter,
    PingpullServer,
    copy_tree,
    loadavg,
    process_cpu_s,
    raise_fd_limit,
)
from bench.protocols.devices import EXTRA_STRATEGIES, STRATEGIES, STRATEGY_LABELS
from bench.protocols.scenario import (
    SERVER_ENV,
    Plan,
    Seeded,
    SendProgress,
    Sent,
    seed,
    send_messages,
    serve_args,
    verify,
)

DELIVERY_TIMEOUT_MIN_S: Final = 30.0


@dataclass
class Options:
    devices: int = 1000
    messages: int = 2000
    rate_per_s: float = 50.0
    interval_s: float = 5.0
    idle_s: float = 25.0
    connect_spread_s: float = 3.0
    body_chars: int = 80
    strategies: tuple[str, ...] = STRATEGIES
    seed: int = 7
    work_dir: Path | None = None
    keep: bool = False
    quiet: bool = False


@dataclass
class Snapshot:
    """Cumulative counters at one moment: the proxy's per-device counters and the server's CPU."""

    at: float
    server_cpu_s: float
    proxy: Json

    def total(self, key: str, service: str | None = None) -> int:
        value = self.proxy[key]
        if service is None and isinstance(value, dict):
            return sum(sum(v) for v in value.values())
        if service is not None:
            return int(sum(value[service]))
        return int(sum(value))


@dataclass
class Window:
    """What happened between two snapshots."""

    seconds: float
    server_cpu_s: float
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    requests: int
    wakeups: int
    reads: int
    connections: dict[str, int]

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot) -> Window:
        services = ("content", "signal")
        return cls(
            seconds=b.at - a.at,
            server_cpu_s=b.server_cpu_s - a.server_cpu_s,
            bytes_up={s: b.total("up", s) - a.total("up", s) for s in services},
            bytes_down={s: b.total("down", s) - a.total("down", s) for s in services},
            requests=b.total("requests") - a.total("requests"),
            wakeups=b.total("wakeups") - a.total("wakeups"),
            reads=b.total("reads") - a.total("reads"),
            connections={s: b.total("connections", s) - a.total("connections", s) for s in services},
        )

    def bytes(self, service: str | None = None) -> int:
        services = (service,) if service else ("content", "signal")
        return sum(self.bytes_up[s] + self.bytes_down[s] for s in services)


def proxy_failures(a: Snapshot, b: Snapshot) -> list[str]:
    """Connections the byte-counting proxy closed because it could not reach the server."""
    lines = []
    for service in ("content", "signal"):
        failed = b.total("upstream_failures", service) - a.total("upstream_failures", service)
        if failed:
            last = b.proxy["last_upstream_error"][service]
            lines.append(
                f"proxy: {failed} {service} connection(s) closed, the server could not be reached ({last})"
            )
    return lines


@dataclass
class StrategyResult:
    strategy: str
    devices: int
    messages: int
    delivered: int
    connect_s: float
    idle: Window
    busy: Window
    latencies_s: list[float]
    post_latencies_s: list[float]
    rss_before_kib: int
    rss_connected_kib: int
    load_busy_cores: float
    load_irq_cores: float
    load_other_cores: float
    client_cpu_s: float
    proxy_cpu_s: float
    errors: list[str]
    error_count: int
    send_retries: int
    send_behind_s: float
    loadavg_after: str
    token_chars: int
    connections: dict[str, int] = field(default_factory=dict)


class Progress:
    """One status line on stderr, rewritten in place on a terminal; phase lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def phase(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[2K")
        sys.stderr.write(f"{time.monotonic() - self.started:5.0f} s  {text}\n")
        sys.stderr.flush()

    def bar(self, label: str, done: int, total: int, extra: str = "") -> None:
        if self.quiet or not self.tty:
            return
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(f"\r\x1b[2K{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {extra}")
        sys.stderr.flush()

    def done(self) -> None:
        if not self.quiet and self.tty:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


async def _snapshot(proxy: Child, server: PingpullServer) -> Snapshot:
    reply = await proxy.request({"cmd": "snapshot"})
    return Snapshot(at=float(reply["at"]), server_cpu_s=server.cpu_s(), proxy=reply)


@dataclass
class Rig:
    """One strategy's server and proxy, up for the whole run."""

    strategy: str
    server: PingpullServer
    proxy: Child
    ports: list[list[int]]
    content_url: str
    data_dir: Path

    @property
    def label(self) -> str:
        return STRATEGY_LABELS[self.strategy]

    async def snapshot(self) -> Snapshot:
        return await _snapshot(self.proxy, self.server)

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self.proxy.close()
        self.server.stop()


async def start_rig(strategy: str, seeded: Seeded, work: Path, options: Options, proxy: Child) -> Rig:
    """The strategy's server on its copy of the seeded data, and its proxy (started earlier) pointed at it."""
    data_dir = work / strategy
    copy_tree(seeded.data_dir, data_dir)
    server = PingpullServer(serve_args(data_dir), SERVER_ENV, work / f"serve-{strategy}.log")
    try:
        urls = await server.wait_ready()
        content_host, content_port = urls["content"].removeprefix("http://").rsplit(":", 1)
        signal_host, signal_port = urls["signal"].removeprefix("http://").rsplit(":", 1)
        reply = await proxy.request(
            {
                "devices": options.devices,
                "content": [content_host, int(content_port)],
                "signal": [signal_host, int(signal_port)],
                "silence_s": 1.0,
            }
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            await proxy.close()
        server.stop()
        raise
    return Rig(strategy, server, proxy, reply["ports"], urls["content"], data_dir)


async def connect_fleet(rig: Rig, seeded: Seeded, options: Options, work: Path) -> tuple[Child, Json]:
    """A device process for this strategy with every device connected (or polled once)."""
    worker = await Child.start("bench.protocols.devices", f"devices-{rig.strategy}", work)
    try:
        connected = await worker.request(
            {
                "cmd": "start",
                "strategy": rig.strategy,
                "devices": [
                    {
                        "token": account.token,
                        "content_url": f"http://127.0.0.1:{rig.ports[i][0]}",
                        "signal_url": f"http://127.0.0.1:{rig.ports[i][1]}",
                    }
                    for i, account in enumerate(seeded.devices)
                ],
                "interval_s": options.interval_s,
                "connect_spread_s": options.connect_spread_s,
                "seed": options.seed,
                "timeout_s": 150,
            },
            timeout_s=180,
        )
        if connected["connected"] < options.devices:
            raise BenchError(
                f"{rig.label}: only {connected['connected']} of {options.devices} devices connected: "
                f"{connected['errors'][:5]}"
            )
    except BaseException:
        await worker.close()
        raise
    return worker, connected


@dataclass
class Fleet:
    """One strategy's device process, connected from the idle phase through its message phase."""

    worker: Child
    connect_s: float
    before_connect: Snapshot
    idle: Window | None = None
    idle_done: trio.Event = field(default_factory=trio.Event)
    rss_before_kib: int = 0
    rss_connected_kib: int = 0


def idle_window_s(strategy: str, options: Options) -> float:
    """Short polling's heartbeat is its poll: two intervals measure it, and its (long) message phase
    can start while the others' windows, which must hold a 25 s heartbeat, are still running."""
    if strategy.startswith("short"):
        return min(options.idle_s, 2 * options.interval_s)
    return options.idle_s


async def connect_and_idle(
    rigs: list[Rig],
    seeded: Seeded,
    options: Options,
    work: Path,
    progress: Progress,
    nursery: trio.Nursery,
) -> dict[str, Fleet]:
    """Every strategy's devices connect at once, then the idle windows open together.

    Each window closes in a task of `nursery` (`Fleet.idle_done`); this returns when the first
    strategy's window has closed, so its message phase can begin while the others' still run."""
    progress.phase(
        f"[idle] connecting {options.devices:,} devices for each of " + ", ".join(r.label for r in rigs)
    )
    fleets: dict[str, Fleet] = {}
    try:
        async with trio.open_nursery() as connecting:

            async def connect(rig: Rig) -> None:
                before, rss = await rig.snapshot(), rig.server.rss_kib()
                worker, connected = await connect_fleet(rig, seeded, options, work)
                fleets[rig.strategy] = Fleet(worker, float(connected["seconds"]), before, rss_before_kib=rss)

            for rig in rigs:
                connecting.start_soon(connect, rig)
        await trio.sleep(0.5)
        for rig in rigs:
            fleets[rig.strategy].rss_connected_kib = rig.server.rss_kib()
        windows = {r.strategy: idle_window_s(r.strategy, options) for r in rigs}
        progress.phase(
            "[idle] no messages for " + ", ".join(f"{windows[r.strategy]:g} s ({r.label})" for r in rigs)
        )
        opened = trio.current_time()
        for rig in rigs:
            start = await rig.snapshot()

            async def close(rig: Rig, start: Snapshot, at: float) -> None:
                await trio.sleep_until(at)
                fleet = fleets[rig.strategy]
                fleet.idle = Window.between(start, await rig.snapshot())
                fleet.idle_done.set()

            nursery.start_soon(close, rig, start, opened + windows[rig.strategy])
        first = fleets[rigs[0].strategy]
        while not first.idle_done.is_set():
            elapsed = trio.current_time() - opened
            progress.bar("[idle]", int(elapsed), int(windows[rigs[0].strategy]), "s")
            with trio.move_on_after(0.5):
                await first.idle_done.wait()
        progress.done()
    except BaseException:
        with trio.CancelScope(shield=True):
            for fleet in fleets.values():
                await fleet.worker.close()
        raise
    return fleets


async def message_phase(
    rig: Rig,
    fleet: Fleet,
    seeded: Seeded,
    plan: Plan,
    options: Options,
    progress: Progress,
    background: Sequence[int],
) -> StrategyResult:
    """Send the plan, wait until every message is in its device's hands, verify, measure.

    `background` are the pids of the other strategies' processes still up (idle fleets, servers,
    proxies): the load meter counts them as ours, not as other work on the machine."""
    label = rig.label
    worker = fleet.worker
    if not fleet.idle_done.is_set():
        progress.phase(f"[{label}] waiting for its idle window to close")
        await fleet.idle_done.wait()
    assert fleet.idle is not None
    try:
        progress.phase(
            f"[{label}] sending {options.messages:,} messages at {options.rate_per_s:g}/s "
            f"to random devices of {options.devices:,}"
        )
        load = LoadMeter([rig.server.pid, rig.proxy.pid, worker.pid, *background])
        busy_start = await rig.snapshot()
        devices_cpu0 = process_cpu_s(worker.pid)
        load.start()
        sending = SendProgress()
        sent: list[Sent] = []

        async def sender() -> None:
            sent.extend(
                await send_messages(
                    rig.content_url,
                    seeded,
                    plan,
                    options.rate_per_s,
                    f"{rig.strategy}-{options.seed}",
                    sending,
                )
            )

        total = len(plan.recipients)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            received = 0
            last_change = trio.current_time()
            while True:
                status = await worker.request({"cmd": "status"})
                if status["received"] != received:
                    received, last_change = status["received"], trio.current_time()
                progress.bar(f"[{label}] delivered", received, total, f"(sent {sending.sent})")
                if len(sent) == total and received >= total:
                    break
                if len(sent) == total and trio.current_time() - last_change > max(
                    DELIVERY_TIMEOUT_MIN_S, 3 * options.interval_s
                ):
                    break  # verify() below says what is missing
                await trio.sleep(0.05)
        busy_end = await rig.snapshot()
        devices_cpu = process_cpu_s(worker.pid) - devices_cpu0
        load_busy, load_irq, load_other = load.stop()
        progress.done()
        result = await worker.request({"cmd": "stop"}, timeout_s=60)
    finally:
        await worker.close()
    final = await rig.snapshot()
    receipts: list[list[tuple[int, int, float]]] = [
        [(int(m), int(s), float(t)) for m, s, t in device] for device in result["received"]
    ]
    verify(label, sent, receipts)
    committed = {s.message_id: s.committed_at for s in sent}
    latencies = sorted(t - committed[m] for device in receipts for m, _, t in device)
    return StrategyResult(
        strategy=rig.strategy,
        devices=options.devices,
        messages=total,
        delivered=sum(len(d) for d in receipts),
        connect_s=fleet.connect_s,
        idle=fleet.idle,
        busy=Window.between(busy_start, busy_end),
        latencies_s=latencies,
        post_latencies_s=sorted(s.committed_at - s.started_at for s in sent),
        rss_before_kib=fleet.rss_before_kib,
        rss_connected_kib=fleet.rss_connected_kib,
        load_busy_cores=load_busy,
        load_irq_cores=load_irq,
        load_other_cores=load_other,
        client_cpu_s=devices_cpu,
        proxy_cpu_s=float(busy_end.proxy["cpu_s"]) - float(busy_start.proxy["cpu_s"]),
        errors=[*proxy_failures(fleet.before_connect, final), *result["errors"]],
        error_count=int(result["error_count"]),
        send_retries=sending.retries,
        send_behind_s=sending.behind_s,
        loadavg_after=loadavg(),
        token_chars=len(seeded.devices[0].token),
        connections=Window.between(fleet.before_connect, final).connections,
    )


async def run_all(options: Options, progress: Progress) -> tuple[list[StrategyResult], float]:
    raise_fd_limit()
    started = time.monotonic()
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="pingpull-protocols-"))
    work.mkdir(parents=True, exist_ok=True)
    rigs: list[Rig] = []
    fleets: dict[str, Fleet] = {}
    proxies: dict[str, Child] = {}
    try:
        progress.phase(
            f"seeding {options.devices:,} accounts and {options.devices:,} conversations, starting a proxy "
            f"per strategy meanwhile (work dir {work})"
        )
        async with trio.open_nursery() as nursery:

            async def start_proxy(strategy: str) -> None:
                proxies[strategy] = await Child.start("bench.protocols.proxy", f"proxy-{strategy}", work)

            for strategy in options.strategies:
                nursery.start_soon(start_proxy, strategy)
            seeded = await seed(work / "seed", options.devices)
        plan = Plan.make(options.devices, options.messages, options.body_chars, options.seed)
        progress.phase("starting a server per strategy")
        async with trio.open_nursery() as nursery:

            async def start(strategy: str) -> None:
                rigs.append(await start_rig(strategy, seeded, work, options, proxies.pop(strategy)))

            for strategy in options.strategies:
                nursery.start_soon(start, strategy)
        rigs.sort(key=lambda r: options.strategies.index(r.strategy))
        results = []
        async with trio.open_nursery() as windows:
            fleets.update(await connect_and_idle(rigs, seeded, options, work, progress, windows))
            while rigs:  # one at a time; the fleets not yet measured stay connected and idle meanwhile
                rig = rigs[0]
                fleet = fleets.pop(rig.strategy)
                background = [p for r in rigs[1:] for p in (r.server.pid, r.proxy.pid)]
                background += [f.worker.pid for f in fleets.values()]
                results.append(await message_phase(rig, fleet, seeded, plan, options, progress, background))
                rigs.pop(0)
                await rig.close()
    except BaseException:
        progress.done()
        progress.phase(f"logs are in {work}")
        raise
    finally:
        with trio.CancelScope(shield=True):
            for fleet in fleets.values():
                await fleet.worker.close()
            for proxy in proxies.values():
                await proxy.close()
        for rig in rigs:
            await rig.close()
    if not options.keep:
        shutil.rmtree(work, ignore_errors=True)
    return results, time.monotonic() - started


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Options()
    parser.add_argument("--devices", "-D", type=int, default=defaults.devices, help="devices (1000)")
    parser.add_argument("--messages", "-M", type=int, default=defaults.messages, help="messages (2000)")
    parser.add_argument(
        "--rate", type=float, default=defaults.rate_per_s, help="messages per second sent (50)"
    )
    parser.add_argument(
        "--interval", type=float, default=defaults.interval_s, help="short-polling interval, s (5)"
    )
    parser.add_argument(
        "--idle", type=float, default=defaults.idle_s, help="idle window before the messages, s (25)"
    )
    parser.add_argument(
        "--connect-spread", type=float, default=defaults.connect_spread_s, help="connect over this, s (3)"
    )
    parser.add_argument("--body-chars", type=int, default=defaults.body_chars, help="message body size (80)")
    parser.add_argument(
        "--strategies",
        default=",".join(defaults.strategies),
        help=f"comma-separated, of {','.join(STRATEGIES + EXTRA_STRATEGIES)} (default: the first four)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="traffic seed (7)")
    parser.add_argument(
        "--output",
        default=str(RESULTS_DIR / "protocols.md"),
        help="Markdown report ('' for stdout only); charts go next to it",
    )
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    parser.add_argument("--work-dir", type=Path, help="where servers keep data and logs (a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")


def options_from(args: argparse.Namespace) -> Options:
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    if unknown := sorted(set(strategies) - set(STRATEGIES + EXTRA_STRATEGIES)):
        raise SystemExit(
            f"unknown strategies {unknown}; choose from {','.join(STRATEGIES + EXTRA_STRATEGIES)}"
        )
    if args.devices < 1 or args.messages < 1 or args.rate <= 0 or args.interval <= 0 or args.idle < 0:
        raise SystemExit("--devices, --messages, --rate and --interval must be positive, --idle >= 0")
    return Options(
        devices=args.devices,
        messages=args.messages,
        rate_per_s=args.rate,
        interval_s=args.interval,
        idle_s=args.idle,
        connect_spread_s=args.connect_spread,
        body_chars=args.body_chars,
        strategies=strategies,
        seed=args.seed,
        work_dir=args.work_dir,
        keep=args.keep,
    )


def main(argv: Sequence[str] | None = None, prog: str = "pingpull bench protocols") -> int:
    from bench.protocols import report

    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    options = options_from(args)
    progress = Progress(quiet=False)
    try:
        results, wall_s = trio.run(run_all, options, progress)
    except BenchError as exc:
        print(f"\n{prog}: FAILED: {exc}", file=sys.stderr)
        return 1
    output = Path(args.output) if args.output else None
    charts = [] if args.no_charts or output is None else report.charts(results, output.parent)
    text = report.render(
        results, options, wall_s, prog, list(argv if argv is not None else sys.argv[1:]), charts
    )
    report.write(text, output)
    return 0
