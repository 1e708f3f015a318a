"""Alembic migrations produce exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from pingpull.db import migrate
from pingpull.db.schema import metadata
from tests.support.services import async_url, pg_admin, unavailable


def _differences(url: str) -> list[object]:
    async def inspect() -> list[object]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:

                def compare(sync: Connection) -> list[object]:
                    context = MigrationContext.configure(sync, opts={"compare_type": True})
                    return list(compare_metadata(context, metadata))

                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(inspect())


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    probe = request.getfixturevalue("postgres_template")
    if isinstance(probe, Exception):
        unavailable("PostgreSQL", probe)
    name = f"pingpull_m_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    yield async_url(name)
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_matches_the_declared_schema_and_downgrade_round_trips(empty_database: str) -> None:
    migrate.upgrade(empty_database)
    assert _differences(empty_database) == []
    migrate.downgrade(empty_database, "base")
    migrate.upgrade(empty_database)
    assert _differences(empty_database) == []
