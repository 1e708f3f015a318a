"""Benchmark: broadcast throughput, frames/s delivered to 10,000 WebSocket connections.

Run ``.venv/bin/python -m bench.gateway_fanout`` (``--help`` for the knobs). Servers, each in its own
process (bench/_ws_client_process.py), each holding `--connections` connections (one device each):

* ``pingpull`` (the gateway: `Gateway` + `run_signal`, `MemoryBus`), driven through the real path
  ``bus.publish`` -> hub callback -> pre-encoded frame -> non-blocking ``socket.send``, two ways:
  ``per-user``: one `Publication` per user per round, each with its own frame (head, message id) and
  one device, which is what a message to a group of N makes; ``broadcast``: one `Publication` naming
  every device, one frame shared by all. Publications are built before the clock starts (the content
  service builds them, not the gateway) and published in chunks of `--batch`.
* ``trio-websocket``: ``await ws.send_message(frame)`` to every connection in turn, per round.
* ``websockets``: ``websockets.asyncio.server.broadcast(connections, frame)`` per round.

Each trial publishes `--rounds` rounds (round r carries NEW head r, so every connection must see
consecutive heads) and counts at the clients: `--clients` processes of raw sockets and epoll, which
verify every frame (22 bytes: 0x82 0x14 + version 1, kind NEW, head = previous + 1) and check that
every connection got exactly `--rounds`. The delivered rate is frames / (server starts publishing ->
last frame read by a client); the server rate is frames / the server's publishing loop. With
`--pin` (default) the servers run on CPU 0 and the clients share the other CPUs, so a client that
falls behind shows up as delivered rate < server rate, not as a slower server. All servers are up at
once, each with its own client processes, and the trials are interleaved in an order that rotates from
trial to trial: on a shared, noisy machine a bad minute then hits every server, not just one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench._gateway_support import (
    RESULTS_DIR,
    ChildError,
    ClientPool,
    ForeignLoad,
    HarnessServer,
    Profile,
    PySpy,
    command_line,
    cpu_sets,
    machine_info,
    median,
    output_arg,
    ratio,
    summarize_pyspy,
    wait_for_quiet,
    write_report,
)
from pingpull.tokens import create_key

SERVERS: Final = ("pingpull", "trio-websocket", "websockets")
VARIANTS: Final = {
    "pingpull": ("per-user", "broadcast", "raw-send"),
    "trio-websocket": ("broadcast",),
    "websockets": ("broadcast",),
}
LABELS: Final = {
    ("pingpull", "per-user"): "pingpull: bus.publish, one publication per user (own frame each)",
    ("pingpull", "broadcast"): "pingpull: bus.publish, one publication to all devices (shared frame)",
    ("trio-websocket", "broadcast"): "trio-websocket: await send_message per connection",
    ("websockets", "broadcast"): "websockets: broadcast() (asyncio)",
    ("pingpull", "raw-send"): "floor, not a server: bare `sock.send(frame)` loop over the gateway's sockets",
}
GOAL_VARIANTS: Final = ("per-user", "broadcast")
PACKAGES: Final = ("trio", "trio-websocket", "wsproto", "websockets")

Key = tuple[str, str]


@dataclass
class Trial:
    frames: int
    expected: int
    delivered_per_s: float
    server_per_s: float
    server_cpu_us_per_frame: float
    server_user_us_per_frame: float
    server_sys_us_per_frame: float
    client_busy: float  # fraction of the client CPUs busy while counting
    bad: int
    foreign: float  # other processes' CPUs busy meanwhile (1.0 = one CPU)
    min_per_conn: int
    max_per_conn: int
    timed_out: bool


def run_trial(
    server: HarnessServer, pool: ClientPool, variant: str, args: argparse.Namespace, client_cpus: int
) -> Trial:
    foreign = ForeignLoad()
    foreign.start()
    conns = pool.arm(args.rounds, args.timeout)
    reply = server.request(
        {"cmd": "publish", "rounds": args.rounds, "mode": variant, "batch": args.batch}, args.timeout
    )
    answers = pool.collect(args.timeout + 10)
    foreign_load = foreign.stop([server.pid, *(client.pid for client in pool.clients)])
    expected = conns * args.rounds
    missing = sum(int(a["missing"]) for a in answers)
    frames = expected - missing
    t0, t1 = int(reply["t0_ns"]), int(reply["t1_ns"])
    last = max(int(a["last_ns"]) for a in answers)
    timed_out = any(a["timed_out"] for a in answers)
    delivered_s = (last - t0) / 1e9 if not timed_out and last > t0 else float("nan")
    client_cpu = sum(float(a["cpu_s"]) for a in answers)
    return Trial(
        frames=frames,
        expected=expected,
        delivered_per_s=frames / delivered_s if delivered_s == delivered_s else float("nan"),
        server_per_s=int(reply["frames"]) / ((t1 - t0) / 1e9),
        server_cpu_us_per_frame=float(reply["cpu_s"]) * 1e6 / max(1, int(reply["frames"])),
        server_user_us_per_frame=float(reply["user_s"]) * 1e6 / max(1, int(reply["frames"])),
        server_sys_us_per_frame=float(reply["sys_s"]) * 1e6 / max(1, int(reply["frames"])),
        client_busy=client_cpu / delivered_s / client_cpus if delivered_s == delivered_s else float("nan"),
        bad=sum(int(a["bad"]) for a in answers),
        foreign=foreign_load,
        min_per_conn=min(int(a["min_per_conn"]) for a in answers),
        max_per_conn=max(int(a["max_per_conn"]) for a in answers),
        timed_out=timed_out,
    )


def _log_trial(key: Key, i: int, trial: Trial) -> None:
    print(
        f"{key[0]}/{key[1]} trial {i + 1}: delivered {trial.delivered_per_s:,.0f}/s, "
        f"server {trial.server_per_s:,.0f}/s, {trial.server_cpu_us_per_frame:.2f} µs CPU/frame, "
        f"clients {trial.client_busy:.0%} busy, others {trial.foreign:.2f} CPUs, bad {trial.bad}, "
        f"per conn {trial.min_per_conn}..{trial.max_per_conn}",
        file=sys.stderr,
    )


def measure(
    args: argparse.Namespace,
    workdir: Path,
    results: dict[Key, list[Trial]],
    profiles: dict[str, Profile],
    retried: dict[Key, int],
) -> None:
    """All servers up at once, each with its own client pool; trials interleaved, in an order that
    rotates from trial to trial, so a noisy moment on the machine does not land on one server only."""
    server_cpus, client_cpus = cpu_sets(args.pin)
    n_client_cpus = len(client_cpus) if client_cpus else len(os.sched_getaffinity(0))
    servers: dict[str, HarnessServer] = {}
    pools: dict[str, ClientPool] = {}
    try:
        for impl in args.servers:
            keys_dir = workdir / f"keys-{impl}"
            create_key(keys_dir)
            servers[impl] = HarnessServer(
                impl, keys_dir=keys_dir, ping_interval_s=args.ping_interval, cpus=server_cpus, log_dir=workdir
            )
            pools[impl] = pool = ClientPool(args.clients, cpus=client_cpus, log_dir=workdir)
            result = pool.connect(
                "127.0.0.1", servers[impl].port, first_id=1, count=args.connections, keys_dir=keys_dir
            )
            if result.established != args.connections:
                raise SystemExit(
                    f"{impl}: {result.established}/{args.connections} connected: {result.errors}"
                )
            held = servers[impl].connections()
            if held != args.connections:
                raise SystemExit(f"{impl}: server holds {held}, expected {args.connections}")
        keys = [(impl, variant) for impl in args.servers for variant in VARIANTS[impl]]
        rounds = args.rounds
        args.rounds = 1
        for impl, variant in keys:  # warm-up: code paths, caches, socket buffers
            run_trial(servers[impl], pools[impl], variant, args, n_client_cpus)
        args.rounds = rounds
        for i in range(args.trials):
            shift = i % len(keys)
            for key in keys[shift:] + keys[:shift]:
                for _attempt in range(args.retries + 1):
                    time.sleep(args.pause)
                    trial = run_trial(servers[key[0]], pools[key[0]], key[1], args, n_client_cpus)
                    _log_trial(key, i, trial)
                    if trial.foreign <= args.max_foreign:
                        break
                    retried[key] = retried.get(key, 0) + 1
                    print(
                        f"  others used {trial.foreign:.2f} CPUs meanwhile: waiting, then again",
                        file=sys.stderr,
                    )
                    wait_for_quiet(args.max_foreign, args.quiet_wait)
                results[key].append(trial)
        if args.profile and "pingpull" in servers:
            # Extra trials under py-spy, not counted above: where the publishing loop spends its time.
            for variant in ("per-user", "broadcast"):
                spy = PySpy(
                    servers["pingpull"].pid, workdir / f"pyspy-{variant}.txt", rate_hz=args.profile_rate
                )
                for _ in range(args.profile_trials):
                    run_trial(servers["pingpull"], pools["pingpull"], variant, args, n_client_cpus)
                spy.stop()
                profiles[variant] = summarize_pyspy(spy.output, focus="MemoryBus.publish (")
    finally:
        for pool in pools.values():
            with contextlib.suppress(Exception):
                pool.close()
        for server in servers.values():
            server.close()


def render_profiles(profiles: dict[str, Profile], args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    for variant, profile in profiles.items():
        lines += [
            "",
            f"## Profile: pingpull {variant} (py-spy, {args.profile_rate} Hz, {args.profile_trials} extra "
            f"trials, {profile.samples:,} samples under `MemoryBus.publish`)",
            "",
            "py-spy samples Python stacks only: time inside a C call (a `send()` syscall) is charged to "
            "the Python line that made it.",
            "",
            "| self time, by line | share |",
            "|---|---:|",
            *(f"| `{name}` | {share:.1%} |" for name, share in profile.self_lines),
            "",
            "| inclusive time, by function | share |",
            "|---|---:|",
            *(f"| `{name}` | {share:.1%} |" for name, share in profile.inclusive),
        ]
    return lines


def render(
    results: dict[Key, list[Trial]],
    profiles: dict[str, Profile],
    retried: dict[Key, int],
    args: argparse.Namespace,
    wall_s: float,
    aborted: str | None = None,
) -> str:
    def counted(key: Key) -> list[Trial]:
        # Medians over the trials that ran while the machine was quiet, if there are any.
        clean = [t for t in results[key] if t.foreign <= args.max_foreign]
        return clean or results[key]

    def med(key: Key, attr: str) -> float:
        return median([float(getattr(t, attr)) for t in counted(key)])

    tw = ("trio-websocket", "broadcast")
    ws = ("websockets", "broadcast")
    base_tw = med(tw, "delivered_per_s") if results.get(tw) else float("nan")
    base_ws = med(ws, "delivered_per_s") if results.get(ws) else float("nan")
    server_cpus, client_cpus = cpu_sets(args.pin)
    placement = (
        f"server pinned to CPU {sorted(server_cpus)}, clients to CPUs {sorted(client_cpus)}"
        if server_cpus and client_cpus
        else "no CPU pinning"
    )
    lines = [
        "# Gateway fan-out throughput",
        "",
        f"`{command_line('bench.gateway_fanout')}`",
        "",
        f"{args.connections:,} WebSocket connections (one device each) held by each server; a trial "
        f"publishes {args.rounds} rounds to all of them ({args.connections * args.rounds:,} frames), "
        f"counted and verified at {args.clients} client processes per server (raw sockets, epoll). "
        f"All servers run side by side; trials are interleaved, the order rotating from trial to trial. "
        f"Median of {args.trials} trials after a 1-round warm-up; {placement}. Wall time {wall_s:.0f} s.",
        "",
        *machine_info(PACKAGES),
        "",
        "| server | delivered frames/s | vs trio-websocket | vs websockets | server loop frames/s "
        "| server CPU µs/frame (user + sys) | client CPUs busy | others' CPUs | frames verified |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, trials in results.items():
        if not trials:
            continue
        rate = med(key, "delivered_per_s")
        frames = sum(t.frames for t in trials)
        expected = sum(t.expected for t in trials)
        bad = sum(t.bad for t in trials)
        exact = all(t.min_per_conn == t.max_per_conn == args.rounds for t in trials)
        verified = (
            f"{frames:,}/{expected:,}, bad {bad}, {'exactly' if exact else 'NOT exactly'} {args.rounds}/conn"
        )
        lines.append(
            f"| {LABELS[key]} | **{rate:,.0f}** | {ratio(rate, base_tw)} | {ratio(rate, base_ws)} "
            f"| {med(key, 'server_per_s'):,.0f} | {med(key, 'server_cpu_us_per_frame'):.2f} "
            f"({med(key, 'server_user_us_per_frame'):.2f} + {med(key, 'server_sys_us_per_frame'):.2f}) "
            f"| {med(key, 'client_busy'):.0%} | {med(key, 'foreign'):.2f} | {verified} |"
        )
    lines += [
        "",
        '"others\' CPUs": CPU used meanwhile by processes outside this benchmark (this machine is '
        f"shared), in CPUs; a trial during which others used more than {args.max_foreign:g} CPUs was "
        f"run again after a quiet spell (up to {args.retries} times); medians are over the quiet trials "
        "when there are any.",
        "",
        "Per trial (delivered frames/s; others' CPUs):",
        "",
    ]
    for key, trials in results.items():
        quiet = sum(1 for t in trials if t.foreign <= args.max_foreign)
        again = f" ({retried[key]} re-run(s))" if retried.get(key) else ""
        again += f" — {quiet} of {len(trials)} quiet"
        lines.append(
            f"- {LABELS[key]}{again}: "
            + " / ".join(f"{t.delivered_per_s:,.0f} ({t.foreign:.2f})" for t in trials)
        )
    lines.append("")
    for variant in GOAL_VARIANTS:
        key = ("pingpull", variant)
        if results.get(key):
            rate = med(key, "delivered_per_s")
            goal_tw, goal_ws = rate >= 2 * base_tw, rate >= 1.5 * base_ws
            verdict = "met" if goal_tw and goal_ws else "NOT met"
            lines.append(
                f"Goal (≥ 2× trio-websocket and ≥ 1.5× websockets) for pingpull {variant}: **{verdict}** "
                f"({ratio(rate, base_tw)} and {ratio(rate, base_ws)})."
            )
    floor = ("pingpull", "raw-send")
    if results.get(floor):
        floor_rate, floor_cpu = med(floor, "delivered_per_s"), med(floor, "server_cpu_us_per_frame")
        lines.append("")
        lines.append(
            f"The floor (one bare `send()` per frame, no server logic) delivers {ratio(floor_rate, base_ws)} "
            f"websockets' rate at {floor_cpu:.2f} µs CPU/frame, most of it in the kernel."
        )
        for variant in GOAL_VARIANTS:
            key = ("pingpull", variant)
            if results.get(key):
                extra = med(key, "server_cpu_us_per_frame") - floor_cpu
                lines.append(
                    f"pingpull {variant} spends {extra:.2f} µs/frame of CPU above the floor "
                    f"({med(key, 'server_user_us_per_frame'):.2f} µs user vs "
                    f"{med(floor, 'server_user_us_per_frame'):.2f} for the floor)."
                )
    if aborted is not None:
        lines += ["", f"**The run was aborted** ({aborted}); the figures above are the trials done before."]
    lines += render_profiles(profiles, args)
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_fanout", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--connections", type=int, default=10_000, help="connections per server (10000)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per trial (20)")
    parser.add_argument("--trials", type=int, default=5, help="trials per server and variant; medians (5)")
    parser.add_argument("--clients", type=int, default=4, help="client processes per server (4)")
    parser.add_argument("--batch", type=int, default=1000, help="pingpull publications per publish() (1000)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between trials (0.5)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per trial before failing (120)")
    parser.add_argument(
        "--ping-interval", type=float, default=600.0, help="server ping interval, s (600: none in a run)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"subset of {','.join(SERVERS)}")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True, help="pin CPUs (yes)")
    parser.add_argument(
        "--max-foreign", type=float, default=0.15, help="re-run a trial if others used more CPUs (0.15)"
    )
    parser.add_argument("--retries", type=int, default=3, help="re-runs per trial at most (3)")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="seconds to wait for quiet (30)")
    parser.add_argument("--profile", action="store_true", help="also profile pingpull with py-spy")
    parser.add_argument("--profile-trials", type=int, default=3, help="extra trials under py-spy (3)")
    parser.add_argument("--profile-rate", type=int, default=500, help="py-spy samples per second (500)")
    parser.add_argument(
        "--output", type=output_arg, default=RESULTS_DIR / "gateway_fanout.md", help="report ('' to skip)"
    )
    args = parser.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    if unknown := sorted(set(args.servers) - set(SERVERS)):
        parser.error(f"unknown servers {unknown}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    profiles: dict[str, Profile] = {}
    retried: dict[Key, int] = {}
    results: dict[Key, list[Trial]] = {
        (impl, variant): [] for impl in args.servers for variant in VARIANTS[impl]
    }
    aborted: str | None = None
    with tempfile.TemporaryDirectory(prefix="pingpull-gateway-fanout-") as tmp:
        try:
            measure(args, Path(tmp), results, profiles, retried)
        except ChildError as exc:
            # A server or client stopped answering (e.g. a trial slower than --timeout on a loaded
            # machine): report the trials already done rather than losing the whole run.
            aborted = str(exc)
            print(f"aborted: {exc}", file=sys.stderr)
    write_report(render(results, profiles, retried, args, time.monotonic() - started, aborted), args.output)


if __name__ == "__main__":
    main()
