"""Schema migrations with Alembic, driven from code (no alembic.ini to keep in sync).

Alembic's environment uses asyncio.run, so call these from a thread with no running event loop:
the CLI calls them before trio starts, services through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations

SCRIPT_LOCATION = Path(migrations.__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError("no migration scripts found")
    return head


def current_revision_sync(connection: object) -> str | None:
    """The revision stamped in a database, given a synchronous SQLAlchemy Connection."""
    return MigrationContext.configure(connection).get_current_revision()  # type: ignore[arg-type]
