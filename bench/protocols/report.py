"""The protocol lab's report: Markdown tables, the usual claims checked, PNG charts (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench.protocols.common import fmt, loadavg, machine_info, percentile, write_report
from bench.protocols.devices import MOBILE_HEADERS, STRATEGY_LABELS

if TYPE_CHECKING:
    from bench.protocols.run import Options, StrategyResult

PACKAGES: Final = (
    "trio",
    "httpx",
    "trio-websocket",
    "wsproto",
    "hypercorn",
    "quart",
    "SQLAlchemy",
    "aiosqlite",
)
HOUR_S: Final = 3600.0


class Derived:
    """The numbers of one strategy, derived once from its raw counters."""

    def __init__(self, r: StrategyResult) -> None:
        self.r = r
        idle, busy = r.idle, r.busy
        n = max(1, r.delivered)
        self.idle_device_hours = r.devices * idle.seconds / HOUR_S
        self.busy_device_hours = r.devices * busy.seconds / HOUR_S
        idle_rate = idle.bytes() / idle.seconds if idle.seconds else 0.0  # bytes/s, all devices
        idle_signal_rate = idle.bytes("signal") / idle.seconds if idle.seconds else 0.0
        idle_cpu_rate = idle.server_cpu_s / idle.seconds if idle.seconds else 0.0
        idle_wake_rate = idle.wakeups / idle.seconds if idle.seconds else 0.0
        self.bytes_per_msg = busy.bytes() / n
        self.signal_bytes_per_msg = busy.bytes("signal") / n
        self.content_bytes_per_msg = busy.bytes("content") / n
        self.net_bytes_per_msg = (busy.bytes() - idle_rate * busy.seconds) / n
        self.net_signal_bytes_per_msg = (busy.bytes("signal") - idle_signal_rate * busy.seconds) / n
        self.up_down = {
            (s, d): (busy.bytes_up if d == "up" else busy.bytes_down)[s] / n
            for s in ("signal", "content")
            for d in ("up", "down")
        }
        self.requests_per_msg = busy.requests / n
        self.cpu_per_1k = busy.server_cpu_s / n * 1000
        self.net_cpu_per_1k = (busy.server_cpu_s - idle_cpu_rate * busy.seconds) / n * 1000
        self.busy_wakeups_per_hour = busy.wakeups / self.busy_device_hours if self.busy_device_hours else 0.0
        self.net_wakeups_per_msg = (busy.wakeups - idle_wake_rate * busy.seconds) / n
        lat = r.latencies_s
        self.p50, self.p90, self.p99 = (percentile(lat, q) * 1000 for q in (50, 90, 99))
        self.max = (lat[-1] if lat else float("nan")) * 1000
        self.mean = sum(lat) / len(lat) * 1000 if lat else float("nan")
        h = self.idle_device_hours or float("nan")
        self.idle_bytes_per_hour = idle.bytes() / h
        self.idle_requests_per_hour = idle.requests / h
        self.idle_wakeups_per_hour = idle.wakeups / h
        self.idle_bytes_per_wakeup = idle.bytes() / idle.wakeups if idle.wakeups else float("nan")
        self.idle_bytes_per_request = idle.bytes() / idle.requests if idle.requests else float("nan")
        self.idle_up_per_request = (
            sum(idle.bytes_up.values()) / idle.requests if idle.requests else float("nan")
        )
        self.idle_cpu_core_pct = idle_cpu_rate * 100
        self.idle_cpu_ms_per_device_hour = idle.server_cpu_s * 1000 / h
        self.rss_per_device_kib = (r.rss_connected_kib - r.rss_before_kib) / max(1, r.devices)
        self.achieved_rate = r.delivered / busy.seconds if busy.seconds else float("nan")


def _label(r: StrategyResult) -> str:
    return STRATEGY_LABELS[r.strategy]


def tables(results: Sequence[StrategyResult], options: Options) -> list[str]:
    d = [Derived(r) for r in results]
    lines = [
        "### Delivering messages",
        "",
        f"{options.messages:,} messages at {options.rate_per_s:g}/s to random devices among "
        f"{options.devices:,}; bytes are both directions on the devices' sockets (HTTP heads and bodies, "
        "WebSocket frames; no TLS, no TCP/IP headers), over the whole message phase (so the heartbeats and "
        "empty polls of that phase are included); *net of idle* subtracts what the same devices cost "
        "while idle for as long. Latency: from the sender holding the 201 (the transaction had "
        "committed) to the message in the app's `on_items`"
        + (
            f" ({early} message{'s' if early != 1 else ''} reached its app before the sender had its 201: "
            "the gateway writes "
            "the signal before the content service writes the answer)."
            if (early := sum(1 for r in results for t in r.latencies_s if t < 0))
            else "."
        ),
        "",
        "| strategy | bytes/msg | signal | content | net of idle | HTTP req/msg | latency p50 ms | p90 | p99 "
        "| max | server CPU s/1k msgs | net of idle | wake-ups/device-hour |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in d:
        lines.append(
            f"| {_label(x.r)} | {fmt(x.bytes_per_msg)} | {fmt(x.signal_bytes_per_msg)} "
            f"| {fmt(x.content_bytes_per_msg)} | {fmt(x.net_bytes_per_msg)} | {x.requests_per_msg:.2f} "
            f"| {fmt(x.p50, 1)} | {fmt(x.p90, 1)} | {fmt(x.p99, 1)} | {fmt(x.max, 1)} "
            f"| {x.cpu_per_1k:.2f} | {x.net_cpu_per_1k:.2f} | {fmt(x.busy_wakeups_per_hour)} |"
        )
    lines += [
        "",
        "### Idle devices",
        "",
        f"{options.devices:,} connected devices per strategy, all four fleets connected at once, no "
        f"messages, windows opened together right after connecting: {options.idle_s:g} s, so that each "
        "device's first heartbeat (WebSocket ping, SSE comment, long-poll timeout) falls inside it; "
        "short polling's heartbeat is its poll, two intervals measure it, and its message phase starts "
        "while the other windows run on. A wake-up is any send or receive after more than 1 s of silence "
        "on all of the device's connections.",
        "",
        "| strategy | window s | bytes/idle device-hour | HTTP req/idle device-hour "
        "| wake-ups/idle device-hour | bytes per idle wake-up | server CPU, % of a core "
        "| server CPU ms/idle device-hour | server RSS KiB/connected device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in d:
        lines.append(
            f"| {_label(x.r)} | {x.r.idle.seconds:.1f} | {fmt(x.idle_bytes_per_hour)} "
            f"| {fmt(x.idle_requests_per_hour)} "
            f"| {fmt(x.idle_wakeups_per_hour)} | {fmt(x.idle_bytes_per_wakeup)} "
            f"| {x.idle_cpu_core_pct:.1f} | {fmt(x.idle_cpu_ms_per_device_hour, 1)} "
            f"| {fmt(x.rss_per_device_kib, 1)} |"
        )
    lines += [
        "",
        "### Run conditions",
        "",
        "Machine load during the message phase: *busy* is the whole machine's CPU in cores (from "
        "/proc/stat), *irq* the part spent in hard and soft interrupts (on loopback mostly the network "
        "stack's softirq, charged to no process), *others* what remains after subtracting that, the "
        "servers, proxies and device processes of this run and the sender (other work sharing the "
        "machine). Devices and proxy CPU are for the message phase.",
        "",
        "| strategy | connect s | message phase s | delivered/s | POST p50 ms | sender late s | busy cores "
        "| irq cores | others cores | devices CPU s | proxy CPU s | signal conns | content conns "
        "| client errors | load avg after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for x in d:
        r = x.r
        lines.append(
            f"| {_label(r)} | {r.connect_s:.1f} | {r.busy.seconds:.1f} | {x.achieved_rate:.1f} "
            f"| {percentile(r.post_latencies_s, 50) * 1000:.1f} | {r.send_behind_s:.2f} "
            f"| {r.load_busy_cores:.2f} | {r.load_irq_cores:.2f} | {r.load_other_cores:.2f} "
            f"| {r.client_cpu_s:.1f} "
            f"| {r.proxy_cpu_s:.1f} | {r.connections.get('signal', 0):,} "
            f"| {r.connections.get('content', 0):,} "
            f"| {r.error_count} | {r.loadavg_after} |"
        )
    errors = [e for r in results for e in r.errors[:3]]
    if errors:
        lines += ["", "Client errors (first few): " + "; ".join(f"`{e}`" for e in errors)]
    return lines


def claims(results: Sequence[StrategyResult], options: Options) -> list[str]:
    by = {r.strategy: Derived(r) for r in results}
    out = ["### The usual claims, against these numbers", ""]
    if "short-h2" in by:
        h = by["short-h2"]
        out.append(
            f"- The same empty poll over HTTP/2 (h2c, HPACK) measured {fmt(h.idle_bytes_per_request)} bytes "
            f"({fmt(h.idle_up_per_request)} up)."
        )
    if "short" in by:
        s = by["short"]
        down = s.idle_bytes_per_request - s.idle_up_per_request
        out.append(
            f"- *~800 bytes of headers per poll*: an empty short poll (request with the mobile headers "
            f"and a {s.r.token_chars}-character token, plus the empty answer) measured "
            f"{fmt(s.idle_bytes_per_request)} bytes: {fmt(s.idle_up_per_request)} up, {fmt(down)} down."
        )
    if "poll" in by:
        p = by["poll"]
        out.append(
            f"- Long polling's idle exchange (a 204 at the timeout and the next hanging GET) measured "
            f"{fmt(p.idle_bytes_per_wakeup)} bytes per wake-up."
        )
    if "ws" in by:
        w = by["ws"]
        out.append(
            "- *2 bytes of framing per WebSocket message*: the signal cost "
            f"{fmt(w.net_signal_bytes_per_msg, 1)} bytes per message net of heartbeats "
            "(20-byte frame + 2-byte header), but the pull and ack "
            f"that follow it cost {fmt(w.content_bytes_per_msg)} bytes per message; an idle WebSocket "
            f"costs {fmt(w.idle_bytes_per_wakeup, 1)} bytes per heartbeat (ping + masked pong)."
        )
    if "short" in by:
        s = by["short"]
        out.append(
            f"- *Latency up to the polling interval*: short polling every {options.interval_s:g} s gave "
            f"p50 {fmt(s.p50 / 1000, 2)} s, mean {fmt(s.mean / 1000, 2)} s, max {fmt(s.max / 1000, 2)} s; "
            + ", ".join(f"{_label(x.r)} p50 {fmt(x.p50, 1)} ms" for k, x in by.items() if k != "short")
            + "."
        )
    out.append(
        "- *Radio wake-ups*: per idle device-hour "
        + ", ".join(f"{_label(x.r)} {fmt(x.idle_wakeups_per_hour)}" for x in by.values())
        + "."
    )
    out.append(
        "- *CPU per request*: server CPU seconds per 1,000 delivered messages "
        + ", ".join(f"{_label(x.r)} {x.cpu_per_1k:.2f}" for x in by.values())
        + f"; just holding {options.devices:,} idle devices: "
        + ", ".join(f"{_label(x.r)} {x.idle_cpu_core_pct:.1f}% of a core" for x in by.values())
        + "."
    )
    return out


def render(
    results: Sequence[StrategyResult],
    options: Options,
    wall_s: float,
    prog: str,
    argv: Sequence[str],
    charts: Sequence[Path],
) -> str:
    from bench.protocols.common import command_line

    lines = [
        "# The protocol lab: short polling, long polling, SSE and WebSocket on the same chat traffic",
        "",
        f"`{prog}` ran the same scenario against a fresh embedded `pingpull serve` (SQLite, in-memory bus) "
        f"per strategy: {options.devices:,} devices, each its own user with its own HTTP connection pool "
        f"(a direct conversation with one sender), {options.messages:,} messages of {options.body_chars} "
        f"characters at {options.rate_per_s:g}/s to random devices, short polling every "
        f"{options.interval_s:g} s. Every device ended with exactly the messages addressed to it "
        "(checked: none missing, none twice, seqs gap-free). Bytes, requests and wake-ups come from a "
        "byte-counting TCP proxy (its own process) between each device and the server; CPU from "
        f"/proc/<server pid>/stat. Wall time {wall_s:.0f} s.",
        "",
        *machine_info(
            PACKAGES,
            command_line(prog, argv),
            [
                f"- load average at the end (1 / 5 / 15 min): {loadavg()}; the machine is shared with "
                "other work, see *others cores* below",
                "- content requests carry: "
                + ", ".join(f"`{k}: {v}`" for k, v in MOBILE_HEADERS.items())
                + f", `Authorization: Bearer <{results[0].token_chars if results else 0}-character token>`",
            ],
        ),
        "",
        *tables(results, options),
        "",
        *claims(results, options),
    ]
    if charts:
        lines += ["", "### Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts]
    return "\n".join(lines) + "\n"


def write(text: str, output: Path | None) -> None:
    write_report(text, output)


def charts(results: Sequence[StrategyResult], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    derived = [Derived(r) for r in results]
    labels = [_label(r) for r in results]
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        lat = [max(t, 1e-4) * 1000 for t in r.latencies_s]
        n = len(lat)
        ax.step(lat, [(i + 1) / n for i in range(n)], where="post", label=_label(r))
    ax.set_xscale("log")
    ax.set_xlabel("delivery latency, ms (committed -> in the app's hands), log scale")
    ax.set_ylabel("fraction of messages")
    ax.set_title("Delivery latency CDF per strategy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(directory / "protocols-latency-cdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0.0] * len(results)
    parts = [
        (("signal", "down"), "signal, server to device"),
        (("signal", "up"), "signal, device to server"),
        (("content", "down"), "content answers (polls, pulls, acks)"),
        (("content", "up"), "content requests (polls, pulls, acks)"),
    ]
    for key, name in parts:
        values = [x.up_down[key] for x in derived]
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, x in enumerate(derived):
        ax.annotate(
            f"{x.bytes_per_msg:,.0f}\n(net of idle {x.net_bytes_per_msg:,.0f})",
            (i, bottom[i]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("bytes on the wire per delivered message")
    ax.set_title("Bytes per delivered message (both directions, heartbeats of the phase included)")
    ax.set_ylim(0, max(bottom) * 1.25 if bottom else 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(directory / "protocols-bytes-per-message.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.bar(labels, [x.idle_bytes_per_hour for x in derived], color="tab:gray")
    left.set_yscale("log")
    left.set_title("bytes per idle device-hour (log)")
    right.bar(labels, [x.idle_wakeups_per_hour for x in derived], color="tab:red")
    right.set_title("network wake-ups per idle device-hour")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    paths.append(directory / "protocols-idle.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
