"""The outbox, from the worker's side: claim due jobs, then finish each one exactly once.

Claims: a worker stamps due, unclaimed (or expired-claim) jobs with its `claim_id` and a
`claimed_until_ms`. On PostgreSQL the candidate rows are picked `FOR UPDATE SKIP LOCKED`, so any
number of workers share the queue without waiting on each other or double-claiming; on SQLite the
write transaction itself is exclusive (one worker). A worker killed mid-batch leaves claims that
expire, and the jobs are claimed again: the only duplicate push possible is one whose send reached the
provider just before the kill, which is the provider's own at-least-once semantics.

Finishing: every finish is conditional on `claim_id`, so a worker whose claim expired (it stalled)
cannot finish a job someone else now holds. A job whose `seq` grew while it was claimed (a new message
arrived) is released rather than deleted, and goes through the policy again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from pingpull.db import dialects
from pingpull.db.schema import device_cursors, devices, push_jobs


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    device_id: int
    user_id: int
    seq: int
    attempts: int
    claim_id: str
    provider: str | None
    token: str | None
    environment: str | None
    acked_seq: int
    last_push_at_ms: int | None
    last_push_seq: int | None


async def claim_due(
    conn: AsyncConnection, *, now_ms: int, batch: int, claim_ttl_ms: int, claim_id: str
) -> list[ClaimedJob]:
    until = now_ms + claim_ttl_ms
    if dialects.is_postgres(conn):
        result = await conn.execute(
            text(
                "UPDATE push_jobs SET claimed_until_ms = :until, claim_id = :claim_id "
                "WHERE device_id IN ("
                "  SELECT device_id FROM push_jobs"
                "  WHERE not_before_ms <= :now AND (claimed_until_ms IS NULL OR claimed_until_ms < :now)"
                "  ORDER BY not_before_ms LIMIT :batch FOR UPDATE SKIP LOCKED"
                ") RETURNING device_id"
            ),
            {"until": until, "claim_id": claim_id, "now": now_ms, "batch": batch},
        )
        claimed = [row.device_id for row in result]
    else:
        due = (
            (
                await conn.execute(
                    select(push_jobs.c.device_id)
                    .where(
                        push_jobs.c.not_before_ms <= now_ms,
                        or_(push_jobs.c.claimed_until_ms.is_(None), push_jobs.c.claimed_until_ms < now_ms),
                    )
                    .order_by(push_jobs.c.not_before_ms)
                    .limit(batch)
                )
            )
            .scalars()
            .all()
        )
        claimed = list(due)
        if claimed:
            await conn.execute(
                update(push_jobs)
                .where(push_jobs.c.device_id.in_(claimed))
                .values(claimed_until_ms=until, claim_id=claim_id)
            )
    if not claimed:
        return []
    rows = await conn.execute(
        select(
            push_jobs.c.device_id,
            push_jobs.c.user_id,
            push_jobs.c.seq,
            push_jobs.c.attempts,
            devices.c.push_provider,
            devices.c.push_token,
            devices.c.push_environment,
            devices.c.last_push_at_ms,
            devices.c.last_push_seq,
            device_cursors.c.acked_seq,
        )
        .join(devices, devices.c.id == push_jobs.c.device_id)
        .outerjoin(device_cursors, device_cursors.c.device_id == push_jobs.c.device_id)
        .where(push_jobs.c.device_id.in_(claimed))
        .order_by(push_jobs.c.not_before_ms)
    )
    return [
        ClaimedJob(
            device_id=r.device_id,
            user_id=r.user_id,
            seq=r.seq,
            attempts=r.attempts,
            claim_id=claim_id,
            provider=r.push_provider,
            token=r.push_token,
            environment=r.push_environment,
            acked_seq=r.acked_seq or 0,
            last_push_at_ms=r.last_push_at_ms,
            last_push_seq=r.last_push_seq,
        )
        for r in rows
    ]


def _held(job: ClaimedJob) -> ColumnElement[bool]:
    """This job, still held by this claim."""
    return and_(push_jobs.c.device_id == job.device_id, push_jobs.c.claim_id == job.claim_id)


async def _finish(conn: AsyncConnection, job: ClaimedJob, *, now_ms: int) -> None:
    """Delete the job if its seq is still the one handled; otherwise release it for another look."""
    deleted = await conn.execute(delete(push_jobs).where(_held(job), push_jobs.c.seq <= job.seq))
    if deleted.rowcount == 0:
        await conn.execute(
            update(push_jobs)
            .where(_held(job))
            .values(claim_id=None, claimed_until_ms=None, attempts=0, not_before_ms=now_ms)
        )


async def finish_dropped(conn: AsyncConnection, job: ClaimedJob, now_ms: int) -> None:
    await _finish(conn, job, now_ms=now_ms)


async def finish_deferred(conn: AsyncConnection, job: ClaimedJob, not_before_ms: int) -> None:
    await conn.execute(
        update(push_jobs)
        .where(_held(job))
        .values(claim_id=None, claimed_until_ms=None, not_before_ms=not_before_ms)
    )


async def finish_delivered(conn: AsyncConnection, job: ClaimedJob, now_ms: int) -> None:
    await conn.execute(
        update(devices)
        .where(devices.c.id == job.device_id)
        .values(last_push_at_ms=now_ms, last_push_seq=job.seq)
    )
    await _finish(conn, job, now_ms=now_ms)


async def finish_retry(conn: AsyncConnection, job: ClaimedJob, not_before_ms: int) -> None:
    await conn.execute(
        update(push_jobs)
        .where(_held(job))
        .values(claim_id=None, claimed_until_ms=None, not_before_ms=not_before_ms, attempts=job.attempts + 1)
    )


async def finish_token_dead(conn: AsyncConnection, job: ClaimedJob, token: str, sent_at_ms: int) -> bool:
    """Remove the token, unless the app registered it (again) after this push was sent.

    Returns whether the token was removed."""
    removed = await conn.execute(
        update(devices)
        .where(
            devices.c.id == job.device_id,
            devices.c.push_token == token,
            or_(devices.c.push_registered_at_ms.is_(None), devices.c.push_registered_at_ms <= sent_at_ms),
        )
        .values(push_provider=None, push_token=None, push_environment=None, push_registered_at_ms=None)
    )
    await conn.execute(delete(push_jobs).where(_held(job)))
    return bool(removed.rowcount)


async def finish_gone(conn: AsyncConnection, job: ClaimedJob) -> None:
    """Rejected, or out of attempts: the job ends."""
    await conn.execute(delete(push_jobs).where(_held(job)))
