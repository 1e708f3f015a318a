"""Nothing is lost if a push worker dies: `kill -9` a real `pingpull serve push` mid-batch.

Two worker processes on one PostgreSQL outbox, provider live against the loopback APNs fake (which
runs in this test's trio run). The first worker is SIGKILLed while it holds a claimed batch in which
some pushes are done, some are in flight (the fake received them and stalls its answer) and some
are claimed but not sent yet; a second worker then finishes everything.

The delivery guarantee this pins down, precisely (at-least-once):

* every due job is pushed at least once: nothing is lost;
* a job finished (row deleted) before the kill is never pushed again;
* a job claimed by the dead worker is not touched by anyone until its claim expires
  (`claimed_until_ms` = claim time + `push.claim_ttl_s`), then it is claimed and pushed again;
* the only pushes sent twice are the ones the provider had received from the dead worker before
  it died without recording the answer: exactly the jobs that were in flight, each sent twice and
  never more. APNs may have delivered that first copy; the device gets the same content-free,
  collapsible wake-up (same `apns-collapse-id`) twice, which is harmless;
* at the end no job is left, claimed or otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pingpull.tokens import ensure_keys
from tests.support.fake_apns import ApnsReply, open_fake_apns
from tests.support.process import ServerProcess, pingpull_serve

KEY_ID, TEAM_ID, TOPIC = "ABC123DEFG", "TEAM456XYZ", "dev.pingpull.crash"
JOBS, BATCH, CONCURRENCY, CLAIM_TTL_S = 60, 20, 4, 5.0
# Batch 1 (tokens 0..19) is answered at once. In batch 2 (20..39) the odd tokens' first push is
# answered only after a minute: with CONCURRENCY of them in flight the worker is stuck mid-batch,
# holding claims on the rest of batch 2. Batch 3 (40..59) is never claimed by the first worker.
STALLED = frozenset(range(BATCH + 1, 2 * BATCH, 2))

T = TypeVar("T")


def token(i: int) -> str:
    return f"{i:064x}"


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _pg(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """asyncpg on its own asyncio loop in a worker thread (the test's loop is trio's)."""

    async def main() -> T:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, main())


async def _seed(conn: asyncpg.Connection) -> None:
    """One user, JOBS devices with APNs tokens, one due job each, claimed in token order."""
    async with conn.transaction():
        user_id = await conn.fetchval(
            "INSERT INTO users (handle, inbox_head, created_at_ms) VALUES ('crash', 1, 0) RETURNING id"
        )
        for i in range(JOBS):
            device_id = await conn.fetchval(
                "INSERT INTO devices (user_id, name, push_provider, push_token, push_environment,"
                " created_at_ms) VALUES ($1, '', 'apns', $2, 'production', 0) RETURNING id",
                user_id,
                token(i),
            )
            await conn.execute(
                "INSERT INTO push_jobs (device_id, user_id, seq, not_before_ms, attempts, created_at_ms)"
                " VALUES ($1, $2, 1, $3, 0, 0)",
                device_id,
                user_id,
                i + 1,
            )


async def _jobs(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    """The outbox by device token."""
    rows = await conn.fetch(
        "SELECT d.push_token, j.claim_id, j.claimed_until_ms, j.attempts, j.seq "
        "FROM push_jobs j JOIN devices d ON d.id = j.device_id"
    )
    return {row["push_token"]: dict(row) for row in rows}


def _claim_id(server: ServerProcess) -> str:
    for line in server.log().splitlines():
        if '"push_worker_started"' in line:
            return str(json.loads(line)["claim_id"])
    raise AssertionError(f"no push_worker_started line:\n{server.log()}")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.mark.e2e
async def test_kill_9_mid_batch_loses_nothing_and_resends_only_what_was_in_flight(
    postgres_url: str, tmp_path: Path
) -> None:
    dsn = _dsn(postgres_url)
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    server_context.set_alpn_protocols(["h2"])
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    apns_key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(_key_pem(apns_key))
    ensure_keys(tmp_path / "keys")  # not embedded: token keys are provisioned, as in production
    await _pg(dsn, _seed)

    processes = contextlib.ExitStack()
    # The second process signs with a JWT of its own (the first one died with its JWT): the fake's
    # "one JWT switch per 20 minutes" model is turned off so that switch is not answered 429.
    async with open_fake_apns(
        server_context, provider_keys={KEY_ID: apns_key.public_key()}, team_id=TEAM_ID, min_token_refresh_s=0
    ) as apns:
        for i in STALLED:
            apns.script(token(i), ApnsReply(delay_s=60))
        endpoint = f"127.0.0.1:{apns.port}"
        env = {
            "PINGPULL_DATABASE_URL": postgres_url,
            "PINGPULL_TOKENS_KEYS_DIR": str(tmp_path / "keys"),
            "PINGPULL_LOG_FORMAT": "json",
            "PINGPULL_PUSH_PROVIDER": "live",
            "PINGPULL_PUSH_METRICS_PORT": "0",
            "PINGPULL_PUSH_POLL_INTERVAL_S": "0.1",
            "PINGPULL_PUSH_CLAIM_TTL_S": str(CLAIM_TTL_S),
            "PINGPULL_PUSH_BATCH_SIZE": str(BATCH),
            "PINGPULL_PUSH_CONCURRENCY": str(CONCURRENCY),
            "PINGPULL_PUSH_APNS_KEY_FILE": str(key_file),
            "PINGPULL_PUSH_APNS_KEY_ID": KEY_ID,
            "PINGPULL_PUSH_APNS_TEAM_ID": TEAM_ID,
            "PINGPULL_PUSH_APNS_TOPIC": TOPIC,
            "PINGPULL_PUSH_APNS_PRODUCTION_HOST": endpoint,
            "PINGPULL_PUSH_APNS_SANDBOX_HOST": endpoint,
            "PINGPULL_PUSH_APNS_CA_FILE": str(ca_file),
        }

        async def start(name: str) -> ServerProcess:
            # Blocking start-up in a thread, so the fake keeps answering while the worker starts.
            started: ServerProcess = await trio.to_thread.run_sync(
                processes.enter_context, pingpull_serve(tmp_path / name, "push", env=env)
            )
            return started

        try:
            first = await start("worker-1")
            stalled_tokens = {token(i) for i in STALLED}

            async def stuck_mid_batch() -> bool:
                sent = {record.token for record in apns.requests}
                if len(sent & stalled_tokens) < CONCURRENCY:
                    return False
                # Every push that was answered has been recorded as done: only the stalled remain.
                jobs = await _pg(dsn, _jobs)
                return not (sent - stalled_tokens) & set(jobs)

            await _wait_async(stuck_mid_batch, timeout_s=20)
            first.process.kill()  # SIGKILL: no drain, no finally, no answer recorded
            await trio.to_thread.run_sync(first.process.wait)
            assert first.process.returncode == -9

            sent_before = Counter(record.token for record in apns.requests)
            at_kill = await _pg(dsn, _jobs)
            claim_id = _claim_id(first)
            batch1 = {token(i) for i in range(BATCH)}
            batch2 = {token(i) for i in range(BATCH, 2 * BATCH)}
            batch3 = {token(i) for i in range(2 * BATCH, JOBS)}
            in_flight = set(sent_before) & set(at_kill)
            claimed = {t for t, job in at_kill.items() if job["claim_id"] is not None}
            claimed_unsent = claimed - in_flight

            # The state the kill left: batch 1 done, batch 2 partly done and the rest held by the
            # dead worker's claim (in flight or not yet sent), batch 3 untouched.
            assert all(count == 1 for count in sent_before.values())
            assert not batch1 & set(at_kill)
            assert in_flight == {t for t in sent_before if t in stalled_tokens}
            assert len(in_flight) == CONCURRENCY
            assert claimed == batch2 & set(at_kill) and claimed_unsent, "nothing claimed-but-unsent"
            assert {at_kill[t]["claim_id"] for t in claimed} == {claim_id}
            assert set(at_kill) - claimed == batch3
            # Claims last push.claim_ttl_s from when they were taken (just before the first send).
            first_send_ms = 1000 * min(r.received_at for r in apns.requests if r.token in batch2)
            for t in claimed:
                held_ms = at_kill[t]["claimed_until_ms"] - first_send_ms
                assert CLAIM_TTL_S * 1000 - 2000 < held_ms <= CLAIM_TTL_S * 1000, held_ms

            apns.clear_script()  # the provider is healthy again: the second worker's pushes go through
            killed_after = len(apns.requests)
            second = await start("worker-2")
            assert _claim_id(second) != claim_id

            async def drained() -> bool:
                return not await _pg(dsn, _jobs)

            await _wait_async(drained, timeout_s=20)
            await trio.sleep(1.0)  # long enough for a stray double send, were there to be one
            assert await _pg(dsn, _jobs) == {}  # nothing left, so no row left claimed either

            sent = Counter(record.token for record in apns.requests)
            assert set(sent) == {token(i) for i in range(JOBS)}  # at least once: nothing lost
            assert {t for t, count in sent.items() if count > 1} == in_flight
            assert max(sent.values()) == 2
            # The dead worker's claims were respected until they expired, then taken over.
            for record in apns.requests[killed_after:]:
                if record.token in claimed:
                    assert record.received_at * 1000 >= at_kill[record.token]["claimed_until_ms"]
                    assert record.token not in sent_before or record.token in in_flight
            # One provider JWT per process, and nothing but a content-free wake-up.
            assert len(apns.jwts()) == 2
            assert all(
                r.payload == {"aps": {"content-available": 1}, "pp": {"head": 1}} for r in apns.requests
            )
        finally:
            await trio.to_thread.run_sync(processes.close)


async def _wait_async(predicate: Callable[[], Awaitable[bool]], *, timeout_s: float) -> None:
    with trio.move_on_after(timeout_s):
        while not await predicate():  # noqa: ASYNC110 - the state is in PostgreSQL and the fake
            await trio.sleep(0.05)
        return
    raise AssertionError(f"condition not met within {timeout_s}s")
