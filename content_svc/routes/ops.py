"""Liveness, readiness and metrics: what load balancers and Prometheus poll."""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response
from quart_schema import hide
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from content_svc.app import context
from content_svc.errors import Unavailable
from pingpull.metrics import render

blueprint = Blueprint("ops", __name__)

_READY_CHECK_TIMEOUT_S = 2.0


@blueprint.get("/healthz")
@hide
async def healthz() -> dict[str, Any]:
    """The process is alive and serving; says nothing about its dependencies."""
    return {"status": "ok"}


@blueprint.get("/readyz")
@hide
async def readyz() -> dict[str, Any]:
    """Ready for traffic: not draining and the database answers."""
    ctx = context()
    if ctx.readiness.draining:
        raise Unavailable("draining")
    with trio.move_on_after(_READY_CHECK_TIMEOUT_S) as scope:
        try:
            await ctx.database.read(_ping)
        except Exception as exc:
            raise Unavailable(f"database unreachable: {type(exc).__name__}") from exc
    if scope.cancelled_caught:
        raise Unavailable("database did not answer in time")
    return {"status": "ready"}


async def _ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))


@blueprint.get("/metrics")
@hide
async def metrics() -> Response:
    ctx = context()
    body = render([ctx.metrics.registry, *ctx.extra_registries])
    return Response(body, content_type=CONTENT_TYPE_LATEST)
