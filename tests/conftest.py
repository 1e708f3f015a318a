"""Fixtures shared by every layer: backends (SQLite and PostgreSQL), a kernel, a live content server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.services import REDIS_URL, PostgresTemplate, SqliteTemplate, pg_admin, unavailable

# Tests assert behaviour, not speed: a loaded machine must not fail a property test on its deadline.
settings.register_profile("pingpull", deadline=None)
settings.load_profile("pingpull")

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    template = SqliteTemplate(tmp_path_factory.mktemp("sqlite-template"))
    template.create()
    return template


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[PostgresTemplate | Exception]:
    # Probed once per session; each test that needs it fails or skips on its own.
    try:
        pg_admin("SELECT 1")
    except Exception as exc:
        yield exc
        return
    template = PostgresTemplate()
    template.create()
    yield template
    template.drop_all()


@pytest.fixture
def postgres_url(postgres_template: PostgresTemplate | Exception) -> Iterator[str]:
    if isinstance(postgres_template, Exception):
        unavailable("PostgreSQL", postgres_template)
    assert isinstance(postgres_template, PostgresTemplate)
    url = postgres_template.fresh_copy()
    yield url
    postgres_template.drop(url.rsplit("/", 1)[1])


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: SqliteTemplate) -> str:
    """A fresh, migrated database on each backend."""
    if request.param == "sqlite":
        return sqlite_template.fresh_copy(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture
async def bridge() -> AsyncIterator[object]:
    from pingpull.aio import open_asyncio_bridge

    async with open_asyncio_bridge() as opened:
        yield opened
