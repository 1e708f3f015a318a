"""The report of `python -m bench.push`: tables, the reading of the results, the machine."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench._report import cpu_model

if TYPE_CHECKING:
    from bench.push import Results, Trial

REPO: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = (
    "trio",
    "SQLAlchemy",
    "asyncpg",
    "aiosqlite",
    "uvloop",
    "aioapns",
    "h2",
    "pyfcm",
    "requests",
    "google-auth",
    "h11",
)

ABLATIONS: Final = {
    "abl-overflow": "max_overflow = pool_size (the pool before session 2: overflow connections closed "
    "whenever the load dips and reopened by the next batch)",
    "abl-pre-ping": "pool_pre_ping on (three round trips per checkout with asyncpg)",
    "abl-async-commit": "synchronous_commit=off for the session",
}


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}×" if baseline else "n/a"


def _median_rate(trials: Sequence[Trial]) -> float:
    return statistics.median(t.rate for t in trials)


def _per_round(trials: Sequence[Trial]) -> str:
    return " / ".join(_rate(t.rate) for t in trials)


def _ms(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    return f"{statistics.median(present):.2f}" if present else "-"


def _verified(trials: Sequence[Trial]) -> str:
    bad = sum(1 for t in trials if not t.ok)
    return f"all {len(trials)} ok" if not bad else f"**{bad} of {len(trials)} FAILED**"


def _connects(trials: Sequence[Trial]) -> str:
    return f"{100 * sum(t.connects for t in trials) / sum(t.jobs for t in trials):.1f}"


def _claim_share(trials: Sequence[Trial]) -> str:
    return f"{100 * sum(t.claim_s for t in trials) / sum(t.wall_s for t in trials):.0f}%"


def _cpus(trials: Sequence[Trial], key: str) -> float:
    return sum(t.cpu.get(key, 0.0) for t in trials) / sum(t.wall_s for t in trials)


def _us_per_push(trials: Sequence[Trial], keys: Sequence[str]) -> float:
    return 1e6 * sum(t.cpu.get(k, 0.0) for t in trials for k in keys) / sum(t.jobs for t in trials)


def code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":!bench"], cwd=REPO, capture_output=True, text=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    paths = [line[3:] for line in dirty if line.strip()]
    if not paths:
        return f"commit {commit} (no uncommitted changes outside bench/)"
    return f"commit {commit}; uncommitted outside bench/ (not this benchmark's): {', '.join(paths[:5])}"


def machine_info(pg_version: str, pg_settings: str, results: Results) -> list[str]:
    cpu = cpu_model()
    versions = []
    for name in PACKAGES:
        with suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{name} {importlib.metadata.version(name)}")
    ls, le = results.load_start, results.load_end
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} vCPU ({cpu}), {platform.system()} {platform.release()}; "
        f"load average (1/5/15 min) at start {ls[0]:.2f} / {ls[1]:.2f} / {ls[2]:.2f}, "
        f"at end {le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f}",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- libraries: {', '.join(versions)}",
        f"- database: PostgreSQL {pg_version}, same machine (loopback), {pg_settings}; "
        "SQLite: WAL, synchronous=NORMAL (pingpull's pragmas), a file under /tmp",
        f"- code: {code_version()}",
    ]


def reading(results: Results, args: argparse.Namespace) -> list[str]:
    """The facts the tables imply, computed (so a re-run keeps them true)."""
    trials = results.trials
    noop = trials["noop-1"]
    mine = ("trio", "bridge", "threads", "children")
    noop_us = _us_per_push(noop, mine)
    noop_pg = _us_per_push(noop, ("postgres",))
    bridge_share = 100 * _cpus(noop, "bridge") / max(1e-9, sum(_cpus(noop, k) for k in mine))
    out = ["## Reading the numbers (computed from this run)", ""]
    out.append(
        f"- The no-op worker's own cost: {noop_us:.0f} µs CPU per job in the worker process "
        f"({bridge_share:.0f}% of it on the bridge's asyncio thread: SQLAlchemy + asyncpg, one finish "
        f"transaction per job) and {noop_pg:.0f} µs in PostgreSQL; the machine was "
        f"{_cpus(noop, 'busy'):.2f} of 2 CPUs busy."
    )
    if "abl-overflow" in trials:
        churn = trials["abl-overflow"]
        churn_pg = _us_per_push(churn, ("postgres",))
        finish = f"{_ms([t.finish_ms for t in noop])} → {_ms([t.finish_ms for t in churn])} ms"
        ratio = _ratio(_median_rate(churn), _median_rate(noop))
        out.append(
            f"- Connection churn: the shipped pool ({args.pool_size} connections, no overflow) at "
            f"concurrency {args.concurrency} opens {_connects(noop)} new PostgreSQL connections per 100 "
            f"jobs; with {args.pool_size} more as overflow (the pool before session 2) it opens "
            f"{_connects(churn)}, at {ratio} the jobs/s, PostgreSQL CPU {noop_pg:.0f} → {churn_pg:.0f} µs "
            f"per job, finish transaction p50 {finish}."
        )
    for key, what in (("abl-pre-ping", "pool_pre_ping on"), ("abl-async-commit", "synchronous_commit=off")):
        if key in trials:
            out.append(
                f"- {what}: {_ratio(_median_rate(trials[key]), _median_rate(noop))} of the shipped rate."
            )
    for key, name in (("apns", "APNs"), ("fcm", "FCM")):
        ts, alone = trials[key], trials[f"{key}-alone"]
        busy = sum(_cpus(ts, k) for k in mine)
        alone_busy = sum(_cpus(alone, k) for k in mine)
        out.append(
            f"- {name} through the worker: {_us_per_push(ts, mine):.0f} µs CPU per push in the worker "
            f"process (no-op: {noop_us:.0f}), {busy:.2f} CPUs of it busy (one Python process, one GIL); the "
            f"fake used {_us_per_push(ts, ('fake',)):.0f} µs per push. Provider alone: "
            f"{_rate(_median_rate(alone))}/s with the fake at {_cpus(alone, 'fake'):.2f} CPUs and the "
            f"provider's process at {alone_busy:.2f}."
        )
    if "sqlite-1" in trials:
        sq = trials["sqlite-1"]
        out.append(
            f"- SQLite: {_ratio(_median_rate(sq), _median_rate(noop))} of PostgreSQL with the machine only "
            f"{_cpus(sq, 'busy'):.2f} CPUs busy: CPU is not the limit; the finish transactions wait for "
            "SQLite's single writer lock, one at a time."
        )
    return out


def render(results: Results, args: argparse.Namespace, pg_version: str, pg_settings: str) -> str:
    trials, labels = results.trials, results.labels
    noop = _median_rate(trials["noop-1"])
    lines = [
        "# Push bridge throughput",
        "",
        f"`{' '.join(['.venv/bin/python', '-m', 'bench.push', *sys.argv[1:]])}`",
        "",
        f"Real `PushWorker.run_once` loops (batch_size {args.batch_size}, concurrency {args.concurrency}) "
        f"draining N seeded due jobs; database pool {args.pool_size} (no overflow) as "
        "shipped; fakes in child processes on loopback. Median of "
        f"{args.rounds} rounds, trial order rotating per round"
        + (", after a warm-up pass at 2% size" if args.warmup else "")
        + f". Wall time {results.wall_s:.0f} s.",
        "",
        *machine_info(pg_version, pg_settings, results),
        "",
        "## 1. Pushes per second through the worker (PostgreSQL, one worker)",
        "",
        "| path | jobs | pushes/s | vs no-op worker | per round | provider send ms (mean) | "
        "finish txn ms (p50) | DB connects per 100 jobs | claim txns, share of wall "
        "| verified (every round) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in ("apns", "fcm", "noop-1"):
        ts = trials[key]
        send = [t.send_ms for t in ts]
        lines.append(
            f"| {labels[key]} | {ts[0].jobs:,} | **{_rate(_median_rate(ts))}** "
            f"| {_ratio(_median_rate(ts), noop)} "
            f"| {_per_round(ts)} | {_ms(send)} | {_ms([t.finish_ms for t in ts])} | {_connects(ts)} "
            f"| {ts[0].claims} claims, {_claim_share(ts)} | {_verified(ts)} |"
        )
    for key in ("apns-alone", "fcm-alone"):
        ts = trials[key]
        lines.append(
            f"| {labels[key]} (concurrency {args.concurrency}) | {ts[0].jobs:,} | {_rate(_median_rate(ts))} "
            f"| {_ratio(_median_rate(ts), noop)} | {_per_round(ts)} | - | - | - | - | {_verified(ts)} |"
        )
    apns, fcm = _median_rate(trials["apns"]), _median_rate(trials["fcm"])
    lines += [
        "",
        f"Through the worker, APNs reaches {_ratio(apns, _median_rate(trials['apns-alone']))} "
        "of the APNs provider "
        f"alone and FCM {_ratio(fcm, _median_rate(trials['fcm-alone']))} of the FCM provider alone. "
        f"APNs tokens minted over the whole run: {results.extra.get('apns_tokens_minted')}; "
        f"FCM access tokens fetched: {results.extra.get('fcm_tokens_fetched')}.",
        "",
        "Verification, last round: "
        + "; ".join(f"{key}: {trials[key][-1].note}" for key in ("apns", "fcm", "noop-1")),
        "",
        f"## 2. Outbox claim throughput (no-op provider, batch {args.batch_size})",
        "",
        "Each worker has its own `claim_id`; ratios are against the one-worker PostgreSQL trial above "
        "(a worker alone in its own process measures the same thing).",
        "",
        "| database | workers | layout | jobs | jobs/s | vs 1 worker | per round | finish txn ms (p50) "
        "| DB connects per 100 jobs | claim txns, share of wall per worker | sends per device "
        "| verified (every round) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    rows: list[tuple[str, str, str, str]] = [("noop-1", "PostgreSQL", "1", "in one process")]
    more = [c for c in args.workers if c > 1]
    rows += [(f"noop-{c}", "PostgreSQL", str(c), "in one process (one bridge, one pool)") for c in more]
    rows += [(f"proc-{c}", "PostgreSQL", str(c), "one process per worker (own bridge + pool)") for c in more]
    rows += [("sqlite-1", "SQLite", "1", "in one process")]
    for key, database, count, layout in rows:
        if key not in trials:
            continue
        ts = trials[key]
        most = "exactly 1" if all(t.ok for t in ts) else "see notes"
        lines.append(
            f"| {database} | {count} | {layout} | {ts[0].jobs:,} | **{_rate(_median_rate(ts))}** "
            f"| {_ratio(_median_rate(ts), noop)} | {_per_round(ts)} | {_ms([t.finish_ms for t in ts])} "
            f"| {_connects(ts)} | {ts[0].claims} claims, {_claim_share(ts)} | {most} | {_verified(ts)} |"
        )
    multi = [key for key in trials if key.startswith("proc-")]
    if multi:
        lines += [
            "",
            "Worker processes, last round: " + "; ".join(f"{k}: {trials[k][-1].note}" for k in multi),
        ]
    abl = [key for key in ABLATIONS if key in trials]
    if abl:
        lines += [
            "",
            "## 3. Ablations of the no-op worker (PostgreSQL, one worker; NOT the shipped configuration)",
            "",
            "Each changes one setting of the engine `pingpull.db.engine.create_engine` builds.",
            "",
            "| change | jobs | jobs/s | vs no-op worker as shipped | per round | finish txn ms (p50) "
            "| DB connects per 100 jobs | verified |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for key in abl:
            ts = trials[key]
            lines.append(
                f"| {labels[key]} | {ts[0].jobs:,} | {_rate(_median_rate(ts))} "
                f"| {_ratio(_median_rate(ts), noop)} "
                f"| {_per_round(ts)} | {_ms([t.finish_ms for t in ts])} | {_connects(ts)} | {_verified(ts)} |"
            )
    lines += ["", *reading(results, args), ""]
    lines += [
        "",
        "## Where the CPU goes",
        "",
        "CPUs busy on average during the drains (CPU-seconds / wall-seconds, all rounds pooled; this "
        "machine has 2). \"trio\" is the bench process's trio thread (worker, policy, providers' trio side, "
        'the no-op provider); "bridge" its asyncio thread (uvloop: SQLAlchemy + asyncpg/aiosqlite, '
        'aioapns + h2); "threads" its other threads (FCM\'s requests/pyfcm workers); "others" is CPU used by '
        "processes outside the benchmark.",
        "",
        "| scenario | trio | bridge | threads | worker procs | postgres | fake | others | machine busy "
        "| CPU µs/push: bench process / postgres / fake |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, ts in trials.items():
        cells = " | ".join(
            f"{_cpus(ts, k):.2f}"
            for k in ("trio", "bridge", "threads", "children", "postgres", "fake", "others", "busy")
        )
        per = " / ".join(
            f"{_us_per_push(ts, keys):.0f}"
            for keys in (("trio", "bridge", "threads", "children"), ("postgres",), ("fake",))
        )
        lines.append(f"| {labels.get(key, key)} | {cells} | {per} |")
    lines += ["", "Trial order per round: " + " | ".join(", ".join(order) for order in results.order), ""]
    return "\n".join(lines)
