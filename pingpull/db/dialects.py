"""The few statements whose spelling differs between SQLite and PostgreSQL.

Both support `INSERT ... ON CONFLICT` and `RETURNING` (SQLite since 3.35), but SQLAlchemy exposes
them through dialect-specific constructs, and the two-argument max/min are GREATEST/LEAST on
PostgreSQL and max()/min() on SQLite.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement


def is_postgres(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


def insert(conn: AsyncConnection, table: Table) -> Any:
    """An INSERT that offers `on_conflict_do_nothing` / `on_conflict_do_update` on both backends."""
    return postgresql.insert(table) if is_postgres(conn) else sqlite.insert(table)


def greatest(conn: AsyncConnection, a: Any, b: Any) -> ColumnElement[Any]:
    return func.greatest(a, b) if is_postgres(conn) else func.max(a, b)


def least(conn: AsyncConnection, a: Any, b: Any) -> ColumnElement[Any]:
    return func.least(a, b) if is_postgres(conn) else func.min(a, b)
