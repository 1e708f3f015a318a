"""Heads the bus does not know, read from the database where the process has one.

The bus keeps each user's inbox head so a gateway can answer HELLO without a query. It can lack one:
the in-process bus starts empty on every start, and Redis loses its keys when it restarts without
persistence. Where the process has the database (`pingpull serve`, all in one), the bus falls back
to `users.inbox_head`, the committed truth, and remembers it (forward only, like a publish), so a
device whose cursor equals its head pulls nothing after a restart. A gateway without a database
(`pingpull serve signal`) keeps answering "unknown" for those users, and their clients pull once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from pingpull.bus.base import BusError
from pingpull.db.engine import Database
from pingpull.db.schema import users
from pingpull.errors import BridgeError

# Heads of the given users that exist; users not found are left out (their head stays unknown).
HeadLoader = Callable[[Sequence[int]], Awaitable[Mapping[int, int]]]

# Users per query: well under SQLite's bound-parameter limit, and a resync of a gateway holding
# 100,000 users stays a few hundred short reads.
_CHUNK: Final = 500


def database_head_loader(database: Database) -> HeadLoader:
    async def load(user_ids: Sequence[int]) -> Mapping[int, int]:
        ids = sorted(set(user_ids))
        heads: dict[int, int] = {}
        try:
            for i in range(0, len(ids), _CHUNK):
                heads.update(await database.read(_inbox_heads, ids[i : i + _CHUNK]))
        except (SQLAlchemyError, OSError, BridgeError) as exc:
            raise BusError(f"head lookup in the database failed: {exc}") from exc
        return heads

    return load


async def _inbox_heads(conn: AsyncConnection, user_ids: list[int]) -> dict[int, int]:
    rows = await conn.execute(select(users.c.id, users.c.inbox_head).where(users.c.id.in_(user_ids)))
    return {int(user_id): int(head) for user_id, head in rows}
