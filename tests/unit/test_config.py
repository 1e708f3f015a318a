"""Settings: defaults, the TOML and environment layers, coercion, validation, immutability, derived values.

Every test passes an explicit `env` mapping, so nothing here depends on the real process environment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingpull.config import (
    ContentSettings,
    DatabaseSettings,
    PushSettings,
    Settings,
    SignalSettings,
    TokenSettings,
    build_settings,
    load_settings,
)
from pingpull.errors import ConfigError, PingpullError


def write_toml(tmp_path: Path, text: str, name: str = "pingpull.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(call: Callable[[], object]) -> Exception | None:
    """The exception `call` raises, or None; lets a test report the wrong exception type as a bug."""
    try:
        call()
    except Exception as exc:
        return exc
    return None


# --- defaults ----------------------------------------------------------------------------------------


def test_defaults_validate_and_match_the_documented_values() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.data_dir == "./pingpull-data"
    assert settings.database_url == ""
    assert settings.redis_url == ""
    assert settings.log_format == "text"
    assert settings.log_level == "INFO"
    assert settings.database == DatabaseSettings()
    assert settings.database.pool_size == 10
    assert settings.database.migrate_on_start is True
    assert settings.tokens.access_token_ttl_s == 30 * 24 * 3600
    assert settings.tokens.clock_leeway_s == 30
    assert settings.tokens.issuer == "pingpull"
    assert settings.content.port == 8080
    assert settings.content.registration == "auto"
    assert settings.content.max_request_body_bytes == 64 * 1024
    assert settings.content.send_rate_per_s == 20.0
    assert settings.content.send_burst == 40
    assert settings.signal.port == 8081
    assert settings.signal.max_connections == 15_000
    assert settings.push.provider == "log"
    assert settings.push.repush_after_s == 600.0


def test_build_settings_of_empty_mapping_is_the_defaults() -> None:
    assert build_settings({}) == Settings()


def test_config_error_is_a_pingpull_error() -> None:
    assert issubclass(ConfigError, PingpullError)


# --- environment layer ------------------------------------------------------------------------------


def test_env_maps_section_and_top_level_keys() -> None:
    settings = load_settings(
        env={
            "PINGPULL_HOST": "0.0.0.0",
            "PINGPULL_DATA_DIR": "/srv/pp",
            "PINGPULL_LOG_FORMAT": "json",
            "PINGPULL_LOG_LEVEL": "debug",
            "PINGPULL_REDIS_URL": "redis://r:6379/0",
            "PINGPULL_CONTENT_PORT": "9000",
            "PINGPULL_CONTENT_MAX_PAGE_ITEMS": "500",
            "PINGPULL_SIGNAL_PING_INTERVAL_S": "12.5",
            "PINGPULL_DATABASE_POOL_SIZE": "3",
            "PINGPULL_DATABASE_ECHO": "yes",
            "PINGPULL_TOKENS_ISSUER": "me",
            "PINGPULL_PUSH_PROVIDER": "live",
        }
    )
    assert settings.host == "0.0.0.0"
    assert settings.data_dir == "/srv/pp"
    assert settings.log_format == "json"
    assert settings.log_level == "debug"
    assert settings.redis_url == "redis://r:6379/0"
    assert settings.content.port == 9000
    assert settings.content.max_page_items == 500
    assert settings.signal.ping_interval_s == 12.5
    assert settings.database.pool_size == 3
    assert settings.database.echo is True
    assert settings.tokens.issuer == "me"
    assert settings.push.provider == "live"
    # Untouched keys keep their defaults.
    assert settings.content.host == "127.0.0.1"
    assert settings.signal.port == 8081


def test_env_database_url_is_the_top_level_key() -> None:
    settings = load_settings(env={"PINGPULL_DATABASE_URL": "postgresql://u@h/db"})
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.database.url == ""


def test_env_variable_names_are_case_insensitive_after_the_prefix() -> None:
    assert load_settings(env={"PINGPULL_Content_Port": "9001"}).content.port == 9001


def test_env_ignores_variables_outside_the_namespace() -> None:
    settings = load_settings(env={"HOME": "/root", "pingpull_host": "x", "PINGPULLHOST": "y"})
    assert settings == Settings()


@pytest.mark.parametrize(
    "name",
    ["PINGPULL_REQUIRE_SERVICES", "PINGPULL_TEST_ANYTHING", "PINGPULL_TEST_", "PINGPULL_TEST_POSTGRES_URL"],
)
def test_env_non_setting_variables_are_ignored(name: str) -> None:
    assert load_settings(env={name: "whatever"}) == Settings()


def test_env_empty_pingpull_config_means_no_file() -> None:
    assert load_settings(env={"PINGPULL_CONFIG": ""}) == Settings()


@pytest.mark.parametrize(
    "name",
    [
        "PINGPULL_NOPE",
        "PINGPULL_CONTENT",
        "PINGPULL_CONTENT_",
        "PINGPULL_CONTENT_PROT",  # a typo in a known section
        "PINGPULL_SIGNAL_HOST_NAME",
        "PINGPULL_WIBBLE_PORT",
        "PINGPULL_",
        "PINGPULL_TESTX",
        "PINGPULL_CONFIGS",
    ],
)
def test_env_unknown_variable_is_rejected_by_name(name: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={name: "1"})
    assert str(excinfo.value) == f"unknown setting in environment: {name}"


# --- TOML layer -------------------------------------------------------------------------------------


def test_toml_file_is_loaded(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
log_format = "json"
data_dir = "/var/lib/pp"

[content]
port = 9100
registration = "closed"
send_rate_per_s = 5
max_request_body_bytes = 2048

[signal]
ping_interval_s = 20.0
ping_timeout_s = 5

[database]
url = "postgresql+asyncpg://u@h/db"
echo = true

[push]
provider = "live"
""",
    )
    settings = load_settings(env={}, config_file=path)
    assert settings.log_format == "json"
    assert settings.data_dir == "/var/lib/pp"
    assert settings.content.port == 9100
    assert settings.content.registration == "closed"
    assert settings.content.send_rate_per_s == 5.0
    assert isinstance(settings.content.send_rate_per_s, float)
    assert settings.content.max_request_body_bytes == 2048
    assert settings.signal.ping_interval_s == 20.0
    assert settings.signal.ping_timeout_s == 5.0
    assert isinstance(settings.signal.ping_timeout_s, float)
    assert settings.database.url == "postgresql+asyncpg://u@h/db"
    assert settings.database.echo is True
    assert settings.push.provider == "live"
    assert settings.content.max_page_items == 200  # default kept


def test_toml_file_named_by_pingpull_config_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[content]\nport = 7000\n")
    settings = load_settings(env={"PINGPULL_CONFIG": str(path)})
    assert settings.content.port == 7000


def test_explicit_config_file_wins_over_pingpull_config(tmp_path: Path) -> None:
    named = write_toml(tmp_path, "[content]\nport = 7000\n", "a.toml")
    explicit = write_toml(tmp_path, "[content]\nport = 7001\n", "b.toml")
    settings = load_settings(env={"PINGPULL_CONFIG": str(named)}, config_file=explicit)
    assert settings.content.port == 7001


def test_env_overrides_toml_key_by_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'host = "10.0.0.1"\n[content]\nport = 9100\nmax_page_items = 300\n')
    settings = load_settings(
        env={"PINGPULL_CONTENT_PORT": "9200", "PINGPULL_HOST": "10.0.0.2"}, config_file=path
    )
    assert settings.content.port == 9200
    assert settings.host == "10.0.0.2"
    assert settings.content.max_page_items == 300  # from TOML, not overridden


def test_toml_unknown_top_level_key_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'hots = "0.0.0.0"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={}, config_file=path)
    assert str(excinfo.value) == "unknown setting: hots"


def test_toml_unknown_section_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[contnet]\nport = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={}, config_file=path)
    assert str(excinfo.value) == "unknown setting: contnet"


def test_toml_unknown_section_keys_are_all_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[content]\nzeta = 1\nalpha = 2\nport = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={}, config_file=path)
    assert str(excinfo.value) == "unknown settings: content.alpha, content.zeta"


def test_toml_nested_table_inside_a_section_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[content.limits]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"^unknown setting: content\.limits$"):
        load_settings(env={}, config_file=path)


def test_toml_section_that_is_not_a_table_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'content = "big"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={}, config_file=path)
    assert str(excinfo.value) == "content must be a table"


def test_missing_config_file_gives_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={}, config_file=path)
    assert str(excinfo.value) == f"cannot read config file {path}: No such file or directory"
    assert isinstance(excinfo.value.__cause__, FileNotFoundError)


def test_directory_as_config_file_gives_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={}, config_file=tmp_path)
    assert str(excinfo.value) == f"cannot read config file {tmp_path}: Is a directory"


def test_invalid_toml_gives_config_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[content\nport = \n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={}, config_file=path)
    assert str(excinfo.value).startswith(f"config file {path} is not valid TOML: ")


def test_non_utf8_toml_gives_config_error(tmp_path: Path) -> None:
    # TOML must be UTF-8. tomllib.load decodes before parsing, and its UnicodeDecodeError is not a
    # TOMLDecodeError: the loader must translate it too.
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'host = "caf\xe9"\n')
    exc = error_of(lambda: load_settings(env={}, config_file=path))
    assert isinstance(exc, ConfigError), (
        f"a non-UTF-8 config file raised {type(exc).__name__} ({exc}), not ConfigError"
    )
    assert str(exc).startswith(f"config file {path} is not valid TOML")


# --- coercion ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "Yes", "on", "ON", " true ", "\ton\n"])
def test_bool_truthy_strings(raw: str) -> None:
    assert load_settings(env={"PINGPULL_DATABASE_ECHO": raw}).database.echo is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "No", "off", "", "  "])
def test_bool_falsy_strings(raw: str) -> None:
    settings = load_settings(env={"PINGPULL_DATABASE_MIGRATE_ON_START": raw})
    assert settings.database.migrate_on_start is False


@pytest.mark.parametrize("raw", ["maybe", "2", "tru", "y", "n", "-1", "1.0"])
def test_bool_other_strings_are_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"PINGPULL_DATABASE_ECHO": raw})
    assert str(excinfo.value) == f"database.echo must be a boolean, not {raw!r}"


@pytest.mark.parametrize("value", [1, 0, 1.0, [True]])
def test_bool_non_bool_values_are_rejected(value: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_settings({"database": {"echo": value}})
    assert str(excinfo.value) == f"database.echo must be a boolean, not {value!r}"


def test_int_from_string() -> None:
    assert load_settings(env={"PINGPULL_DATABASE_POOL_SIZE": "12"}).database.pool_size == 12
    assert load_settings(env={"PINGPULL_DATABASE_POOL_SIZE": " 12 "}).database.pool_size == 12


def test_int_from_integral_float() -> None:
    settings = build_settings({"content": {"port": 9000.0}})
    assert settings.content.port == 9000
    assert type(settings.content.port) is int


@pytest.mark.parametrize("raw", ["1.5", "12.0", "1e3", "0x10", "twelve", "", "12abc"])
def test_int_rejects_non_decimal_strings(raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"PINGPULL_CONTENT_PORT": raw})
    assert str(excinfo.value) == f"content.port must be an integer, not {raw!r}"


@pytest.mark.parametrize("value", [1.5, True, False, math.nan, math.inf, None, [1]])
def test_int_rejects_non_integral_values(value: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_settings({"content": {"port": value}})
    assert str(excinfo.value) == f"content.port must be an integer, not {value!r}"


def test_int_rejects_toml_bool(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[content]\nport = true\n")
    with pytest.raises(ConfigError, match=r"^content\.port must be an integer, not True$"):
        load_settings(env={}, config_file=path)


def test_float_from_string_and_int() -> None:
    settings = load_settings(env={"PINGPULL_CONTENT_SEND_RATE_PER_S": "2.5"})
    assert settings.content.send_rate_per_s == 2.5
    settings = build_settings({"content": {"send_rate_per_s": 3}})
    assert settings.content.send_rate_per_s == 3.0
    assert type(settings.content.send_rate_per_s) is float


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_float_rejects_non_finite_strings(raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"PINGPULL_CONTENT_SEND_RATE_PER_S": raw})
    assert str(excinfo.value) == "content.send_rate_per_s must be a finite number"


@pytest.mark.parametrize("literal", ["nan", "inf", "+inf", "-inf"])
def test_float_rejects_non_finite_toml(tmp_path: Path, literal: str) -> None:
    path = write_toml(tmp_path, f"[signal]\nping_interval_s = {literal}\n")
    with pytest.raises(ConfigError, match=r"^signal\.ping_interval_s must be a finite number$"):
        load_settings(env={}, config_file=path)


@pytest.mark.parametrize("value", [True, False, "fast", None, [1.0]])
def test_float_rejects_non_numbers(value: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_settings({"content": {"send_rate_per_s": value}})
    assert str(excinfo.value) == f"content.send_rate_per_s must be a number, not {value!r}"


def test_float_setting_given_a_huge_integer_gives_config_error(tmp_path: Path) -> None:
    # tomllib parses integers of any size, and float() of one beyond ~1.8e308 raises OverflowError
    # (neither TypeError nor ValueError): the coercion must translate it too.
    path = write_toml(tmp_path, "[signal]\nping_interval_s = 1" + "0" * 400 + "\n")
    exc = error_of(lambda: load_settings(env={}, config_file=path))
    assert isinstance(exc, ConfigError), (
        f"a huge integer for a float setting raised {type(exc).__name__} ({exc}), not ConfigError"
    )
    assert str(exc).startswith("signal.ping_interval_s must be a number, not 1000")


@pytest.mark.parametrize("value", [5, 1.5, True, None, ["a"]])
def test_str_rejects_non_strings(value: object) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_settings({"host": value})
    assert str(excinfo.value) == f"host must be a string, not {value!r}"


@pytest.mark.parametrize(("key", "value"), [("push.provider", "live"), ("content.registration", "open")])
def test_literal_choices_accepted(key: str, value: str) -> None:
    section, name = key.split(".")
    settings = build_settings({section: {name: value}})
    assert getattr(getattr(settings, section), name) == value


@pytest.mark.parametrize(
    ("env_name", "raw", "message"),
    [
        ("PINGPULL_LOG_FORMAT", "xml", "log_format must be one of text, json, not 'xml'"),
        ("PINGPULL_LOG_FORMAT", "JSON", "log_format must be one of text, json, not 'JSON'"),
        ("PINGPULL_PUSH_PROVIDER", "APNS", "push.provider must be one of log, live, not 'APNS'"),
        ("PINGPULL_PUSH_PROVIDER", "", "push.provider must be one of log, live, not ''"),
        (
            "PINGPULL_CONTENT_REGISTRATION",
            "invite",
            "content.registration must be one of auto, open, closed, not 'invite'",
        ),
    ],
)
def test_literal_rejects_other_values(env_name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={env_name: raw})
    assert str(excinfo.value) == message


@given(st.integers(min_value=1, max_value=1000))
def test_int_string_round_trip_within_range(pool_size: int) -> None:
    settings = load_settings(env={"PINGPULL_DATABASE_POOL_SIZE": str(pool_size)})
    assert settings.database.pool_size == pool_size


@given(st.integers().filter(lambda n: not 1 <= n <= 1000))
def test_pool_size_outside_range_is_rejected(pool_size: int) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"PINGPULL_DATABASE_POOL_SIZE": str(pool_size)})
    assert str(excinfo.value) == "database.pool_size must be within 1..1000"


@given(st.floats(min_value=0.05, max_value=300))
def test_float_string_round_trip(poll: float) -> None:
    settings = load_settings(env={"PINGPULL_PUSH_POLL_INTERVAL_S": repr(poll)})
    assert settings.push.poll_interval_s == poll


# --- range validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"database": {"pool_size": 0}}, "database.pool_size must be within 1..1000"),
        ({"database": {"pool_size": 1001}}, "database.pool_size must be within 1..1000"),
        ({"database": {"pool_timeout_s": 0}}, "database.pool_timeout_s must be positive"),
        (
            {"database": {"url": "mysql://u@h/db"}},
            "database.url must be sqlite+aiosqlite://... or postgresql+asyncpg://...",
        ),
        ({"tokens": {"access_token_ttl_s": 59}}, "tokens.access_token_ttl_s out of range"),
        ({"tokens": {"access_token_ttl_s": 400 * 24 * 3600 + 1}}, "tokens.access_token_ttl_s out of range"),
        ({"tokens": {"clock_leeway_s": -1}}, "tokens.clock_leeway_s must be within 0..600"),
        ({"tokens": {"clock_leeway_s": 601}}, "tokens.clock_leeway_s must be within 0..600"),
        ({"tokens": {"issuer": ""}}, "tokens.issuer must not be empty"),
        ({"content": {"port": -1}}, "content.port must be within 0..65535"),
        ({"content": {"port": 65536}}, "content.port must be within 0..65535"),
        ({"content": {"max_request_body_bytes": 1023}}, "content.max_request_body_bytes"),
        ({"content": {"max_message_body_chars": 0}}, "content.max_message_body_chars"),
        ({"content": {"max_handle_chars": 257}}, "content.max_handle_chars"),
        ({"content": {"max_members_per_conversation": 1}}, "content.max_members_per_conversation"),
        ({"content": {"default_page_items": 0}}, "content page sizes"),
        ({"content": {"default_page_items": 201}}, "content page sizes"),
        ({"content": {"max_page_items": 10_001, "default_page_items": 5}}, "content page sizes"),
        ({"content": {"max_devices_per_user": 0}}, "content.max_devices_per_user"),
        ({"content": {"send_rate_per_s": 0}}, "content send rate and burst"),
        ({"content": {"send_burst": 0}}, "content send rate and burst"),
        ({"content": {"ack_grace_s": 3600.5}}, "content.ack_grace_s must be within 0..3600"),
        ({"content": {"request_timeout_s": 0}}, "content.request_timeout_s must be positive"),
        ({"signal": {"port": 70000}}, "signal.port must be within 0..65535"),
        ({"signal": {"ping_interval_s": 0.5}}, "signal.ping_interval_s must be within 1..3600"),
        ({"signal": {"ping_timeout_s": 0}}, "signal.ping_timeout_s"),
        ({"signal": {"ping_interval_s": 10, "ping_timeout_s": 40.01}}, "signal.ping_timeout_s"),
        ({"signal": {"drain_window_s": 46}}, "signal drain window within timeout"),
        ({"signal": {"drain_window_s": -1}}, "signal drain window within timeout"),
        ({"signal": {"max_connections": 0}}, "signal.max_connections must be positive"),
        ({"push": {"poll_interval_s": 0.01}}, "push.poll_interval_s must be within 0.05..300"),
        ({"push": {"repush_after_s": -1}}, "push.repush_after_s out of range"),
        ({"log_level": "TRACE"}, "log_level must be DEBUG, INFO, WARNING or ERROR"),
        ({"data_dir": ""}, "data_dir must not be empty"),
    ],
)
def test_out_of_range_values_raise_config_error(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build_settings(data)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    "data",
    [
        {"content": {"port": 0}},
        {"content": {"port": 65535}},
        {"database": {"pool_size": 1}},
        {"database": {"pool_size": 1000}},
        {"tokens": {"access_token_ttl_s": 60}},
        {"tokens": {"access_token_ttl_s": 400 * 24 * 3600}},
        {"tokens": {"clock_leeway_s": 0}},
        {"tokens": {"clock_leeway_s": 600}},
        {"content": {"default_page_items": 200, "max_page_items": 200}},
        {"content": {"max_page_items": 10_000}},
        {"content": {"ack_grace_s": 0}},
        {"signal": {"ping_interval_s": 10, "ping_timeout_s": 40}},
        {"signal": {"drain_window_s": 45, "drain_timeout_s": 45}},
        {"push": {"poll_interval_s": 0.05}},
        {"push": {"repush_after_s": 7 * 24 * 3600}},
        {"log_level": "warning"},
        {"database": {"url": "sqlite+aiosqlite:///x.db"}},
        {"database": {"url": "postgresql://u@h/db"}},
    ],
)
def test_boundary_values_are_accepted(data: dict[str, object]) -> None:
    build_settings(data)


def test_section_dataclasses_validate_on_direct_construction() -> None:
    with pytest.raises(ConfigError, match=r"^content\.port must be within 0\.\.65535$"):
        ContentSettings(port=99999)
    with pytest.raises(ConfigError, match=r"^push\.provider must be log or live$"):
        PushSettings(provider="sms")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^signal\.max_connections must be positive$"):
        SignalSettings(max_connections=0)
    with pytest.raises(ConfigError, match=r"^tokens\.issuer must not be empty$"):
        TokenSettings(issuer="")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///x.db", "postgres://u@h/db", "x"])
def test_top_level_database_url_is_validated_like_database_url(url: str) -> None:
    # `database_url` (PINGPULL_DATABASE_URL, --database-url) wins over `database.url`, so it must be
    # checked the same way rather than fail later at engine creation.
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"PINGPULL_DATABASE_URL": url})
    assert str(excinfo.value) == "database_url must be sqlite+aiosqlite://... or postgresql+asyncpg://..."


# --- immutability and replace ------------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.host = "0.0.0.0"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.content.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.database = DatabaseSettings()  # type: ignore[misc]
    assert settings.host == "127.0.0.1"
    assert settings.content.port == 8080


def test_replace_with_dotted_and_top_level_keys() -> None:
    original = Settings()
    changed = original.replace(**{"content.port": 9000, "signal.max_connections": 5, "host": "0.0.0.0"})
    assert changed.content.port == 9000
    assert changed.signal.max_connections == 5
    assert changed.host == "0.0.0.0"
    assert changed.content.max_page_items == 200
    assert original.content.port == 8080  # the original is untouched
    assert original.host == "127.0.0.1"
    again = changed.replace(log_format="json")
    assert again.content.port == 9000  # earlier replacements are kept
    assert again.log_format == "json"


def test_replace_coerces_values_like_the_loader() -> None:
    changed = Settings().replace(**{"content.port": "9000", "database.echo": "on"})
    assert changed.content.port == 9000
    assert changed.database.echo is True


def test_replace_revalidates() -> None:
    with pytest.raises(ConfigError, match=r"^content\.port must be within 0\.\.65535$"):
        Settings().replace(**{"content.port": 70000})
    with pytest.raises(ConfigError, match=r"^content page sizes$"):
        Settings().replace(**{"content.default_page_items": 300})
    with pytest.raises(ConfigError, match=r"^log_format must be one of text, json, not 'yaml'$"):
        Settings().replace(log_format="yaml")


def test_replace_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"^unknown setting: content\.prot$"):
        Settings().replace(**{"content.prot": 1})
    with pytest.raises(ConfigError, match=r"^unknown setting: nope$"):
        Settings().replace(nope=1)
    with pytest.raises(ConfigError, match=r"^unknown setting: nope$"):
        Settings().replace(**{"nope.port": 1})


def test_replace_section_with_non_table_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^content must be a table$"):
        Settings().replace(content=5)


# --- derived values ---------------------------------------------------------------------------------


def test_effective_database_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    expected = f"sqlite+aiosqlite:///{tmp_path.resolve() / 'pingpull.sqlite3'}"
    assert settings.effective_database_url == expected
    assert expected.startswith("sqlite+aiosqlite:////")  # absolute path: four slashes


def test_effective_database_url_resolves_a_relative_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir="rel/data")
    expected = f"sqlite+aiosqlite:///{tmp_path.resolve() / 'rel' / 'data' / 'pingpull.sqlite3'}"
    assert settings.effective_database_url == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"database_url": "postgresql://u:p@h:5432/db"}, "postgresql+asyncpg://u:p@h:5432/db"),
        ({"database": {"url": "postgresql://u@h/db"}}, "postgresql+asyncpg://u@h/db"),
        ({"database_url": "postgresql+asyncpg://u@h/db"}, "postgresql+asyncpg://u@h/db"),
        ({"database": {"url": "sqlite+aiosqlite:///tmp/x.db"}}, "sqlite+aiosqlite:///tmp/x.db"),
        (
            {"database_url": "postgresql://top@h/db", "database": {"url": "postgresql://section@h/db"}},
            "postgresql+asyncpg://top@h/db",
        ),
    ],
)
def test_effective_database_url(data: dict[str, object], expected: str) -> None:
    assert build_settings(data).effective_database_url == expected


def test_postgres_rewrite_only_touches_the_scheme() -> None:
    url = "postgresql://u@h/postgresql://db"
    assert Settings(database_url=url).effective_database_url == "postgresql+asyncpg://u@h/postgresql://db"


def test_is_embedded() -> None:
    assert Settings().is_embedded is True
    assert Settings(database_url="sqlite+aiosqlite:///x.db").is_embedded is True
    assert Settings(redis_url="redis://localhost").is_embedded is False
    assert Settings(database_url="postgresql://u@h/db").is_embedded is False
    assert build_settings({"database": {"url": "postgresql+asyncpg://u@h/db"}}).is_embedded is False


def test_keys_dir() -> None:
    assert Settings(data_dir="/srv/pp").keys_dir == Path("/srv/pp/keys")
    settings = build_settings({"data_dir": "/srv/pp", "tokens": {"keys_dir": "/etc/pp-keys"}})
    assert settings.keys_dir == Path("/etc/pp-keys")
