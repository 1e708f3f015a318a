"""Real backing services for integration tests: a fresh PostgreSQL database or SQLite file per test.

Under PINGPULL_REQUIRE_SERVICES=1 (CI), a missing service fails the test instead of skipping it, so a
green CI run always means the PostgreSQL half of the suite ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

from pingpull.db import migrate

PG_ADMIN_DSN = os.environ.get("PINGPULL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PINGPULL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def services_required() -> bool:
    return os.environ.get("PINGPULL_REQUIRE_SERVICES", "") not in ("", "0", "false")


def unavailable(what: str, why: object) -> None:
    message = f"{what} is not available: {why}"
    if services_required():
        pytest.fail(message + " (PINGPULL_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_admin(sql: str) -> None:
    """Run one statement as the admin user (CREATE/DROP DATABASE cannot run in a transaction)."""
    asyncio.run(_admin(sql))


def async_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


class PostgresTemplate:
    """A migrated template database; each test gets a cheap copy (CREATE DATABASE ... TEMPLATE)."""

    def __init__(self) -> None:
        self.name = f"pingpull_tmpl_{uuid.uuid4().hex[:10]}"
        self.copies: list[str] = []

    def create(self) -> None:
        pg_admin(f'CREATE DATABASE "{self.name}"')
        migrate.upgrade(async_url(self.name))

    def fresh_copy(self) -> str:
        name = f"pingpull_t_{uuid.uuid4().hex[:12]}"
        pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"')
        self.copies.append(name)
        return async_url(name)

    def drop(self, name: str) -> None:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        for name in [*self.copies, self.name]:
            with contextlib.suppress(Exception):  # best effort clean-up of a test server
                self.drop(name)


class SqliteTemplate:
    """A migrated SQLite file; each test gets a copy of it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "template.sqlite3"

    def create(self) -> None:
        migrate.upgrade(f"sqlite+aiosqlite:///{self.path}")

    def fresh_copy(self, directory: Path) -> str:
        target = directory / "pingpull.sqlite3"
        shutil.copyfile(self.path, target)
        return f"sqlite+aiosqlite:///{target}"
