"""The chat traffic: D device accounts, one sender with a direct conversation to each, M messages.

`seed` builds it once (made as `pingpull serve` makes a data directory, filled through the content
service's own units of work and token signer); every strategy then starts its own server on a copy of
that data directory, so each one begins from the same state with a fresh process. `send_messages`
posts at a steady rate to random recipients (the same recipients and bodies for every strategy), and
`verify` checks that every device ended with exactly the messages addressed to it: none missing, none
twice, none foreign, seqs gap-free.
"""

from __future__ import annotations

import json
import random
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from bench.protocols.common import BenchError
from pingpull.client.content import ContentClient
from pingpull.client.errors import ApiError, TransportError

# Raise the per-user send limit (20/s by default) for the one busy sender, keep drains short.
SERVER_ENV: Final = {
    "PINGPULL_CONTENT_SEND_RATE_PER_S": "100000",
    "PINGPULL_CONTENT_SEND_BURST": "100000",
    "PINGPULL_SIGNAL_DRAIN_WINDOW_S": "0.5",
    "PINGPULL_SIGNAL_DRAIN_TIMEOUT_S": "5",
    # 4,000 devices connecting at once to four servers on two cores queue for the database for longer
    # than the default 10 s (then 503): wait up to 30 s, SQLAlchemy's default, which these SQLite
    # servers had until pool settings were honoured for SQLite.
    "PINGPULL_DATABASE_POOL_TIMEOUT_S": "30",
}
SEED_BATCH: Final = 250
SEND_MAX_IN_FLIGHT: Final = 64
SEND_ATTEMPTS: Final = 4


@dataclass(frozen=True)
class Account:
    user_id: int
    device_id: int
    token: str


@dataclass(frozen=True)
class Seeded:
    data_dir: Path
    sender: Account
    devices: list[Account]
    conversations: list[int]  # the sender's direct conversation with device i

    def save(self) -> None:
        payload = {
            "sender": self.sender.__dict__,
            "devices": [a.__dict__ for a in self.devices],
            "conversations": self.conversations,
        }
        (self.data_dir / "bench-seed.json").write_text(json.dumps(payload))


def serve_args(data_dir: Path) -> list[str]:
    return ["serve", "--data-dir", str(data_dir), "--content-port", "0", "--signal-port", "0"]


async def seed(data_dir: Path, devices: int) -> Seeded:
    """D device accounts and a sender with a direct conversation to each, in `data_dir`.

    The data directory is made the way `pingpull serve` makes it on first start (`compose.prepare`:
    migrations; `compose.open_kernel`: the signing key), then filled in this process through the
    content service's own units of work (`store.create_account`, `store.create_conversation`) and its
    own token signer, a few hundred per transaction: the same rows and tokens as through the API, in
    seconds instead of ~40 s of 2,000 HTTP requests (set-up, not part of any measurement)."""
    from content_svc import store
    from pingpull import compose
    from pingpull.config import build_settings

    settings = build_settings({"data_dir": str(data_dir)})
    await trio.to_thread.run_sync(compose.prepare, settings)
    async with compose.open_kernel(settings) as kernel:
        ctx = compose.content_context(kernel)
        now_ms = ctx.clock_ms()

        async def accounts(conn: Any, handles: list[str]) -> list[tuple[int, int]]:
            return [await store.create_account(conn, handle, "", now_ms) for handle in handles]

        async def conversations(conn: Any, sender_id: int, user_ids: list[int]) -> list[int]:
            max_members = ctx.settings.max_members_per_conversation
            made = [
                await store.create_conversation(conn, sender_id, [uid], None, max_members, now_ms)
                for uid in user_ids
            ]
            return [conversation.id for conversation, _ in made]

        ids: list[tuple[int, int]] = []
        for start in range(0, devices, SEED_BATCH):
            handles = [f"device{i:06d}" for i in range(start, min(devices, start + SEED_BATCH))]
            ids += await ctx.database.transaction(accounts, handles)
        ((sender_uid, sender_did),) = await ctx.database.transaction(accounts, ["sender"])
        conversation_ids: list[int] = []
        for start in range(0, devices, SEED_BATCH):
            batch = [uid for uid, _ in ids[start : start + SEED_BATCH]]
            conversation_ids += await ctx.database.transaction(conversations, sender_uid, batch)
        device_accounts = [Account(uid, did, ctx.signer.mint(uid, did)) for uid, did in ids]
        sender = Account(sender_uid, sender_did, ctx.signer.mint(sender_uid, sender_did))
    seeded = Seeded(data_dir, sender, device_accounts, conversation_ids)
    seeded.save()
    return seeded


@dataclass(frozen=True)
class Plan:
    """Who gets message i, and its body: identical for every strategy (one seed)."""

    recipients: list[int]
    bodies: list[str]

    @classmethod
    def make(cls, devices: int, messages: int, body_chars: int, seed: int) -> Plan:
        rng = random.Random(seed)
        alphabet = string.ascii_lowercase + "     "
        recipients = [rng.randrange(devices) for _ in range(messages)]
        bodies = [
            (f"#{i} " + "".join(rng.choice(alphabet) for _ in range(body_chars)))[:body_chars]
            for i in range(messages)
        ]
        return cls(recipients, bodies)


@dataclass
class Sent:
    index: int
    recipient: int
    message_id: int
    started_at: float
    committed_at: float  # the sender had the 201: the transaction had committed before it


@dataclass
class SendProgress:
    sent: int = 0
    retries: int = 0
    behind_s: float = 0.0  # how late the last send started against the steady schedule
    records: list[Sent] = field(default_factory=list)


async def send_messages(
    content_url: str, seeded: Seeded, plan: Plan, rate_per_s: float, tag: str, progress: SendProgress
) -> list[Sent]:
    """Post every message of the plan at `rate_per_s`, each as its own task (a slow POST does not hold
    back the schedule, up to SEND_MAX_IN_FLIGHT in flight); retries reuse the Idempotency-Key."""
    limits = httpx.Limits(max_connections=SEND_MAX_IN_FLIGHT, max_keepalive_connections=SEND_MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=content_url, timeout=30, limits=limits) as http:
        client = ContentClient(http, seeded.sender.token)
        in_flight = trio.Semaphore(SEND_MAX_IN_FLIGHT)

        async def one(index: int) -> None:
            recipient = plan.recipients[index]
            try:
                for attempt in range(SEND_ATTEMPTS):
                    started = time.monotonic()
                    try:
                        message: dict[str, Any] = await client.send(
                            seeded.conversations[recipient],
                            plan.bodies[index],
                            idempotency_key=f"{tag}-{index}",
                        )
                    except (TransportError, ApiError) as exc:
                        if isinstance(exc, ApiError) and exc.status < 500 and exc.status != 429:
                            raise BenchError(f"message {index} refused: {exc}") from exc
                        if attempt + 1 == SEND_ATTEMPTS:
                            raise BenchError(f"message {index} failed {SEND_ATTEMPTS} times: {exc}") from exc
                        progress.retries += 1
                        await trio.sleep(0.2 * (attempt + 1))
                        continue
                    done = time.monotonic()
                    progress.records.append(Sent(index, recipient, int(message["id"]), started, done))
                    progress.sent += 1
                    return
            finally:
                in_flight.release()

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for index in range(len(plan.recipients)):
                await trio.sleep_until(start + index / rate_per_s)
                await in_flight.acquire()
                progress.behind_s = trio.current_time() - (start + index / rate_per_s)
                nursery.start_soon(one, index)
    return sorted(progress.records, key=lambda s: s.index)


Receipt = tuple[int, int, float]


def verify(strategy: str, sent: list[Sent], received: list[list[Receipt]]) -> None:
    """Every device holds exactly the messages addressed to it, once each, seqs 1..n: else BenchError."""
    expected: list[set[int]] = [set() for _ in received]
    for s in sent:
        expected[s.recipient].add(s.message_id)
    problems: list[str] = []
    for device, receipts in enumerate(received):
        ids = [r[0] for r in receipts]
        counts = Counter(ids)
        duplicated = sorted(m for m, n in counts.items() if n > 1)
        missing = sorted(expected[device] - counts.keys())
        foreign = sorted(counts.keys() - expected[device])
        seqs = sorted(r[1] for r in receipts)
        gaps = seqs != list(range(1, len(seqs) + 1)) and not duplicated
        if duplicated or missing or foreign or gaps:
            problems.append(
                f"device {device}: expected {len(expected[device])}, got {len(ids)}"
                + (f", missing {missing[:5]}" if missing else "")
                + (f", duplicated {duplicated[:5]}" if duplicated else "")
                + (f", not addressed to it {foreign[:5]}" if foreign else "")
                + (f", seqs not 1..n {seqs[:10]}" if gaps else "")
            )
    if problems:
        total_expected = sum(len(e) for e in expected)
        total_got = sum(len(r) for r in received)
        raise BenchError(
            f"{strategy}: DELIVERY INCOMPLETE on {len(problems)} of {len(received)} devices "
            f"({total_got} receipts for {total_expected} messages):\n  " + "\n  ".join(problems[:20])
        )
