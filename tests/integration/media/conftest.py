"""The media suite runs against both blob stores: local disk and a real S3 server (moto_server over
HTTP), each on SQLite and on PostgreSQL."""
# moto_server is a test dependency; under PINGPULL_REQUIRE_SERVICES=1 a missing one fails the S3 half.

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pingpull.tokens import ensure_keys
from tests.support.live import LiveContent, live_content, settings_for_test
from tests.support.s3_server import MotoServer, set_test_credentials


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    set_test_credentials()
    server.start()
    yield server
    server.stop()


# Each blob store with each database would be four runs of a long suite; the pairs below run the whole
# suite on both stores and on both databases (the stores never touch the database, nor it them).
PAIRS = (("sqlite", "local"), ("postgres", "s3"))


@pytest.fixture(params=PAIRS, ids=["-".join(pair) for pair in PAIRS])
def backends(request: pytest.FixtureRequest) -> tuple[str, str]:
    database, storage = request.param
    return str(database), str(storage)


@pytest.fixture
def storage(backends: tuple[str, str]) -> str:
    return backends[1]


@pytest.fixture
def database_url(backends: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Overrides the top-level fixture: the database of this pair."""
    if backends[0] == "sqlite":
        from tests.support.services import SqliteTemplate

        template: SqliteTemplate = request.getfixturevalue("sqlite_template")
        return template.fresh_copy(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def media_settings(storage: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if storage == "local":
        return {"backend": "local"}
    moto: MotoServer = request.getfixturevalue("moto")
    moto.require()
    # Proxy mode, so that every range answer of this suite is our code's, compared byte for byte;
    # the default redirect mode has its own tests (test_s3_redirects.py).
    return moto.media_settings(moto.new_bucket(), s3_download_mode="proxy")


def build_media_server(database_url: str, tmp_path: Path, media: dict[str, Any], **content: Any) -> Any:
    ensure_keys(tmp_path / "keys")
    return live_content(settings_for_test(database_url, tmp_path, media=media, **content))


@pytest.fixture
async def media_live(
    database_url: str, tmp_path: Path, media_settings: dict[str, Any]
) -> AsyncIterator[LiveContent]:
    async with build_media_server(database_url, tmp_path, media_settings) as server:
        yield server
