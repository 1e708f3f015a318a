"""The operator commands: migrate, account create, keys create, and configuration errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.process import pingpull_serve


def _pingpull(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pingpull.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.e2e
def test_account_create_then_use_the_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = _pingpull("account", "create", "operator_made", "--data-dir", str(data))
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    assert set(account) == {"user_id", "device_id", "token"}
    again = _pingpull("account", "create", "operator_made", "--data-dir", str(data))
    assert again.returncode == 2 and "taken" in again.stderr
    bad = _pingpull("account", "create", "No Spaces", "--data-dir", str(data))
    assert bad.returncode == 2 and "invalid handle" in bad.stderr
    with pingpull_serve(data) as server:
        response = httpx.get(
            f"{server.content_url}/v1/inbox", headers={"Authorization": f"Bearer {account['token']}"}
        )
        assert response.json() == {"head": 0, "items": []}


@pytest.mark.e2e
def test_migrate_on_postgres_is_idempotent(postgres_url: str) -> None:
    for _ in range(2):  # the second run finds the schema at head and does nothing
        result = _pingpull("migrate", "--database-url", postgres_url)
        assert result.returncode == 0, result.stderr


@pytest.mark.e2e
def test_unknown_settings_fail_at_start(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "PINGPULL_CONTENT_PROT": "1"}
    result = _pingpull("serve", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "unknown setting in environment: PINGPULL_CONTENT_PROT" in result.stderr
    config = tmp_path / "pingpull.toml"
    config.write_text("[content]\nmax_page_itemz = 5\n")
    result = _pingpull("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "unknown setting: content.max_page_itemz" in result.stderr


@pytest.mark.e2e
def test_registration_is_closed_outside_the_embedded_default(tmp_path: Path, postgres_url: str) -> None:
    assert _pingpull("migrate", "--database-url", postgres_url).returncode == 0
    keys = _pingpull("keys", "create", "--keys-dir", str(tmp_path / "keys"))
    assert keys.returncode == 0, keys.stderr
    env = {"PINGPULL_TOKENS_KEYS_DIR": str(tmp_path / "keys")}
    with pingpull_serve(tmp_path / "data", "--database-url", postgres_url, "content", env=env) as server:
        response = httpx.post(f"{server.content_url}/v1/accounts", json={"handle": "walkin"})
        assert response.status_code == 403
        assert response.json()["type"].endswith("/registration-closed")
