"""Immutable, validated settings for every pingpull service.

Settings come from three layers, later ones winning: the defaults below, an optional TOML file
(`PINGPULL_CONFIG` or `--config`), and environment variables named `PINGPULL_<SECTION>_<KEY>` (or
`PINGPULL_<KEY>` for top-level keys). Command-line flags are applied last by the CLI through
`Settings.replace`. Unknown keys are rejected in every layer: a typo in a limit must fail at start,
not silently leave the default in force. Every duration and size carries its unit in its name.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pingpull.errors import ConfigError
from pingpull.tls import TlsFiles

ENV_PREFIX = "PINGPULL_"
# Variables in the PINGPULL_ namespace that are not settings (they steer the loader or the tests).
NON_SETTING_ENV = frozenset({"PINGPULL_CONFIG", "PINGPULL_REQUIRE_SERVICES"})
NON_SETTING_ENV_PREFIXES = ("PINGPULL_TEST_",)

_T = typing.TypeVar("_T")

LogFormat = Literal["text", "json"]
PushProvider = Literal["log", "live"]
Registration = Literal["auto", "open", "closed"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_database_url(url: str, name: str) -> None:
    if url:
        _require(
            url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://", "postgresql://")),
            f"{name} must be sqlite+aiosqlite://... or postgresql+asyncpg://...",
        )


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Where the relational store lives. Empty `url` means SQLite under the data dir."""

    url: str = ""
    pool_size: int = 10
    pool_timeout_s: float = 10.0
    echo: bool = False
    migrate_on_start: bool = True

    def __post_init__(self) -> None:
        _require(1 <= self.pool_size <= 1000, "database.pool_size must be within 1..1000")
        _require(self.pool_timeout_s > 0, "database.pool_timeout_s must be positive")
        _check_database_url(self.url, "database.url")


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """Signing and verification keys for device access tokens (EdDSA JWTs)."""

    # Directory holding `<kid>.pem` private keys (content service) and/or `<kid>.pub.pem` public keys.
    # Empty means `<data_dir>/keys`, created with a fresh key in the embedded mode.
    keys_dir: str = ""
    # The kid that signs new tokens; empty means the newest private key in keys_dir.
    signing_kid: str = ""
    access_token_ttl_s: int = 30 * 24 * 3600
    clock_leeway_s: int = 30
    issuer: str = "pingpull"

    def __post_init__(self) -> None:
        _require(60 <= self.access_token_ttl_s <= 400 * 24 * 3600, "tokens.access_token_ttl_s out of range")
        _require(0 <= self.clock_leeway_s <= 600, "tokens.clock_leeway_s must be within 0..600")
        _require(bool(self.issuer), "tokens.issuer must not be empty")


@dataclass(frozen=True, slots=True)
class ContentSettings:
    """The stateless HTTP content service and its limits."""

    host: str = "127.0.0.1"
    port: int = 8080
    # "auto": open in the embedded default (SQLite, no Redis), closed anywhere else.
    registration: Registration = "auto"
    max_request_body_bytes: int = 64 * 1024
    max_message_body_chars: int = 16 * 1024
    max_handle_chars: int = 64
    max_title_chars: int = 128
    max_members_per_conversation: int = 256
    max_media_per_message: int = 16
    max_page_items: int = 200
    default_page_items: int = 50
    max_devices_per_user: int = 16
    send_rate_per_s: float = 20.0
    send_burst: int = 40
    # A device connected to the gateway gets this long to pull and ack before it is pushed anyway.
    ack_grace_s: float = 15.0
    request_timeout_s: float = 30.0
    # Connections the kernel may hold for the service before it accepts them (capped by the kernel's
    # net.core.somaxconn): a reconnect storm after a deploy opens thousands at once; hypercorn's own
    # default of 100 makes the rest wait for SYN retransmits, or fail.
    listen_backlog: int = 4096
    # A client that takes no bytes of an answer for this long is disconnected (between two writes
    # that moved data, like nginx's send_timeout: a slow download that moves is never cut).
    send_stall_timeout_s: float = 60.0
    # An idle connection is kept this long: phones reuse connections across bursts of activity, and
    # a short keep-alive costs them a new handshake (and a radio wake-up's worth of round trips).
    keep_alive_timeout_s: float = 75.0
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "content.port must be within 0..65535")
        _require(1024 <= self.max_request_body_bytes <= 64 * 1024 * 1024, "content.max_request_body_bytes")
        _require(1 <= self.max_message_body_chars <= 1024 * 1024, "content.max_message_body_chars")
        _require(1 <= self.max_handle_chars <= 256, "content.max_handle_chars")
        _require(1 <= self.max_title_chars <= 1024, "content.max_title_chars must be within 1..1024")
        _require(0 <= self.max_media_per_message <= 256, "content.max_media_per_message within 0..256")
        _require(self.shutdown_timeout_s > 0, "content.shutdown_timeout_s must be positive")
        _require(2 <= self.max_members_per_conversation <= 100_000, "content.max_members_per_conversation")
        _require(1 <= self.default_page_items <= self.max_page_items <= 10_000, "content page sizes")
        _require(1 <= self.max_devices_per_user <= 1000, "content.max_devices_per_user")
        _require(self.send_rate_per_s > 0 and self.send_burst >= 1, "content send rate and burst")
        _require(0 <= self.ack_grace_s <= 3600, "content.ack_grace_s must be within 0..3600")
        _require(self.request_timeout_s > 0, "content.request_timeout_s must be positive")
        _require(0 < self.send_stall_timeout_s <= 3600, "content.send_stall_timeout_s within 0..3600")
        _require(1 <= self.listen_backlog <= 65535, "content.listen_backlog within 1..65535")
        _require(0 < self.keep_alive_timeout_s <= 3600, "content.keep_alive_timeout_s within 0..3600")


@dataclass(frozen=True, slots=True)
class SignalSettings:
    """The persistent signal gateway."""

    host: str = "127.0.0.1"
    port: int = 8081
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 10.0
    # The whole request head must arrive within this (slowloris), and be at most this big.
    handshake_timeout_s: float = 10.0
    max_head_bytes: int = 8 * 1024
    # Clients only send control frames; anything bigger is abuse (close 1009).
    max_client_frame_bytes: int = 125
    # Bytes queued for a client that does not read; beyond it the connection is dropped.
    max_pending_bytes: int = 16 * 1024
    max_connections: int = 15_000
    max_connections_per_device: int = 4
    handshake_rate_per_s: float = 2_000.0
    handshake_burst: int = 4_000
    poll_max_timeout_s: float = 60.0
    sse_retry_ms: int = 3_000
    drain_window_s: float = 30.0
    drain_timeout_s: float = 45.0
    # Reconnect-delay hint carried in GOAWAY frames, on top of the staggered close.
    goaway_max_delay_ms: int = 1_000
    # Comma-separated subset of ws,sse,poll; a disabled transport answers 404 and clients fall back.
    transports: str = "ws,sse,poll"

    @property
    def enabled_transports(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.transports.split(",") if t.strip())

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "signal.port must be within 0..65535")
        _require(1 <= self.ping_interval_s <= 3600, "signal.ping_interval_s must be within 1..3600")
        _require(0 < self.ping_timeout_s <= self.ping_interval_s * 4, "signal.ping_timeout_s")
        _require(0 < self.handshake_timeout_s <= 120, "signal.handshake_timeout_s must be within 0..120")
        _require(1024 <= self.max_head_bytes <= 1024 * 1024, "signal.max_head_bytes within 1024..1048576")
        _require(2 <= self.max_client_frame_bytes <= 65536, "signal.max_client_frame_bytes within 2..65536")
        _require(256 <= self.max_pending_bytes <= 16 * 1024 * 1024, "signal.max_pending_bytes out of range")
        _require(self.max_connections >= 1, "signal.max_connections must be positive")
        _require(1 <= self.max_connections_per_device <= 64, "signal.max_connections_per_device within 1..64")
        _require(
            self.handshake_rate_per_s > 0 and self.handshake_burst >= 1, "signal handshake rate and burst"
        )
        _require(1 <= self.poll_max_timeout_s <= 600, "signal.poll_max_timeout_s within 1..600")
        _require(0 <= self.sse_retry_ms <= 600_000, "signal.sse_retry_ms within 0..600000")
        _require(0 <= self.drain_window_s <= self.drain_timeout_s, "signal drain window within timeout")
        _require(0 <= self.goaway_max_delay_ms <= 6_553_500, "signal.goaway_max_delay_ms out of range")
        enabled = self.enabled_transports
        _require(
            bool(enabled) and enabled <= {"ws", "sse", "poll"}, "signal.transports: a subset of ws,sse,poll"
        )


@dataclass(frozen=True, slots=True)
class PushSettings:
    """The push bridge: how offline apps are woken."""

    # "log": every push is a JSON line in the log (the embedded default); "live": APNs and FCM.
    provider: PushProvider = "log"
    # Where a stand-alone push bridge serves /metrics (0: a free port; in one process with the
    # content service its metrics are on the content service's /metrics instead).
    metrics_port: int = 8082
    poll_interval_s: float = 2.0
    repush_after_s: float = 600.0
    # Never two pushes to one device within this, acked or not: FCM caps a device's message rate and
    # APNs throttles background pushes; a chatty conversation costs at most one wake-up per interval.
    min_push_interval_s: float = 15.0
    batch_size: int = 100
    concurrency: int = 64
    claim_ttl_s: float = 120.0
    # APNs BadDeviceToken/DeviceTokenNotForTopic, FCM SENDER_ID_MISMATCH/invalid token remove the
    # token only if the provider delivered to another token this recently (else: config suspected).
    config_proof_window_s: float = 3600.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 300.0
    max_attempts: int = 12
    visible_alert: bool = False
    expiry_s: int = 3600
    apns_key_file: str = ""
    apns_key_id: str = ""
    apns_team_id: str = ""
    apns_topic: str = ""
    # host:port overrides (proxies, staging, tests); empty means Apple's production/sandbox hosts.
    apns_production_host: str = ""
    apns_sandbox_host: str = ""
    # A CA bundle to trust for APNs (a TLS-intercepting proxy, a staging fake); empty: the system's.
    apns_ca_file: str = ""
    fcm_service_account_file: str = ""
    fcm_project_id: str = ""
    fcm_endpoint_base: str = ""

    def __post_init__(self) -> None:
        _require(self.provider in ("log", "live"), "push.provider must be log or live")
        _require(0 <= self.metrics_port <= 65535, "push.metrics_port must be within 0..65535")
        _require(0.05 <= self.poll_interval_s <= 300, "push.poll_interval_s must be within 0.05..300")
        _require(0 <= self.repush_after_s <= 7 * 24 * 3600, "push.repush_after_s out of range")
        _require(0 <= self.min_push_interval_s <= 24 * 3600, "push.min_push_interval_s within 0..86400")
        _require(1 <= self.batch_size <= 10_000, "push.batch_size within 1..10000")
        _require(1 <= self.concurrency <= 10_000, "push.concurrency within 1..10000")
        _require(5 <= self.claim_ttl_s <= 3600, "push.claim_ttl_s within 5..3600")
        _require(1 <= self.config_proof_window_s <= 86_400, "push.config_proof_window_s within 1..86400")
        _require(0 < self.retry_initial_s <= self.retry_max_s <= 86_400, "push retry delays")
        _require(1 <= self.max_attempts <= 1000, "push.max_attempts within 1..1000")
        _require(0 <= self.expiry_s <= 28 * 24 * 3600, "push.expiry_s within 0..28 days")


MediaBackend = Literal["local", "s3"]
S3DownloadMode = Literal["redirect", "proxy"]


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """Blob storage for chat media: uploads (raw and tus), downloads with ranges, limits."""

    # "local": files under `<data_dir>/media` (or `local_dir`); "s3": a bucket via boto3.
    backend: MediaBackend = "local"
    local_dir: str = ""
    s3_bucket: str = ""
    s3_prefix: str = "media/"
    # Empty: AWS's own endpoint for the region; set for MinIO, moto, R2 and friends.
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # tus chunks become multipart parts of this size; S3 refuses parts under 5 MiB except the last.
    s3_part_size_bytes: int = 8 * 1024 * 1024
    # "redirect": 302 to a presigned GET (a CDN or the bucket moves the bytes); "proxy": stream them.
    s3_download_mode: S3DownloadMode = "redirect"
    s3_presign_ttl_s: int = 300
    # Where S3 parts are spooled before upload (never memory); empty: `<data_dir>/spool`.
    spool_dir: str = ""
    max_media_bytes: int = 2 * 1024 * 1024 * 1024
    # Comma-separated; `type/*` matches a whole family.
    allowed_content_types: str = (
        "image/*,video/*,audio/*,application/pdf,application/octet-stream,application/zip,text/plain"
    )
    upload_rate_per_s: float = 2.0
    upload_burst: int = 20
    # A token bucket over bytes: a user may upload `upload_quota_bytes` at once, refilled at this rate.
    upload_quota_bytes: int = 4 * 1024 * 1024 * 1024
    upload_quota_refill_bytes_per_s: float = 4 * 1024 * 1024 * 1024 / 3600
    # An unfinished tus upload is deleted (S3 multipart aborted) this long after its last change.
    upload_expiry_s: int = 24 * 3600
    reap_interval_s: float = 300.0
    read_chunk_bytes: int = 1024 * 1024
    # Local disk over HTTP/1.1 without TLS: answers the page cache holds go out with sendfile(2), no
    # copy in the process. Off where the file system's sendfile is unreliable (some network mounts).
    sendfile: bool = True
    max_ranges: int = 16
    # How long a replica reuses "this user may read this media" (0: ask the database every time).
    access_cache_ttl_s: float = 30.0
    cache_max_age_s: int = 365 * 24 * 3600
    # boto3 calls in flight at once per process (each holds a worker thread).
    s3_max_concurrency: int = 32

    @property
    def content_type_patterns(self) -> tuple[str, ...]:
        return tuple(t.strip().lower() for t in self.allowed_content_types.split(",") if t.strip())

    def allows_content_type(self, content_type: str) -> bool:
        wanted = content_type.split(";", 1)[0].strip().lower()
        family = wanted.split("/", 1)[0] + "/*"
        return bool(wanted) and any(p in (wanted, family) for p in self.content_type_patterns)

    def __post_init__(self) -> None:
        _require(self.backend in ("local", "s3"), "media.backend must be local or s3")
        _require(self.backend != "s3" or bool(self.s3_bucket), "media.s3_bucket is required for s3")
        _require(
            5 * 1024 * 1024 <= self.s3_part_size_bytes <= 5 * 1024**3,
            "media.s3_part_size_bytes must be within 5 MiB..5 GiB (S3's part limits)",
        )
        _require(self.s3_download_mode in ("redirect", "proxy"), "media.s3_download_mode: redirect|proxy")
        _require(1 <= self.s3_presign_ttl_s <= 7 * 24 * 3600, "media.s3_presign_ttl_s within 1..604800")
        _require(1 <= self.max_media_bytes <= 5 * 1024**4, "media.max_media_bytes within 1..5 TiB")
        _require(bool(self.content_type_patterns), "media.allowed_content_types must not be empty")
        _require(self.upload_rate_per_s > 0 and self.upload_burst >= 1, "media upload rate and burst")
        _require(
            self.upload_quota_bytes >= self.max_media_bytes,
            "media.upload_quota_bytes must allow at least one upload of media.max_media_bytes",
        )
        _require(self.upload_quota_refill_bytes_per_s > 0, "media.upload_quota_refill_bytes_per_s > 0")
        _require(60 <= self.upload_expiry_s <= 30 * 24 * 3600, "media.upload_expiry_s within 60s..30 days")
        _require(1 <= self.reap_interval_s <= 86_400, "media.reap_interval_s within 1..86400")
        _require(
            64 * 1024 <= self.read_chunk_bytes <= 16 * 1024 * 1024, "media.read_chunk_bytes 64 KiB..16 MiB"
        )
        _require(1 <= self.max_ranges <= 1000, "media.max_ranges within 1..1000")
        _require(0 <= self.access_cache_ttl_s <= 3600, "media.access_cache_ttl_s within 0..3600")
        _require(0 <= self.cache_max_age_s <= 10 * 365 * 24 * 3600, "media.cache_max_age_s out of range")
        _require(1 <= self.s3_max_concurrency <= 1024, "media.s3_max_concurrency within 1..1024")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a pingpull process needs; one immutable value built once at start."""

    host: str = "127.0.0.1"
    data_dir: str = "./pingpull-data"
    database_url: str = ""
    redis_url: str = ""
    # TLS for every service's port (content: h2 + HTTP/3 on the same port number; gateway: wss://).
    tls_cert: str = ""
    tls_key: str = ""
    # Namespace of keys and pub/sub channels, so deployments can share a Redis (channels are global).
    redis_prefix: str = "pp"
    log_format: LogFormat = "text"
    log_level: str = "INFO"
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    content: ContentSettings = field(default_factory=ContentSettings)
    signal: SignalSettings = field(default_factory=SignalSettings)
    push: PushSettings = field(default_factory=PushSettings)
    media: MediaSettings = field(default_factory=MediaSettings)

    def __post_init__(self) -> None:
        _require(self.log_format in ("text", "json"), "log_format must be text or json")
        _require(
            self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "log_level must be DEBUG, INFO, WARNING or ERROR",
        )
        _require(bool(self.data_dir), "data_dir must not be empty")
        _check_database_url(self.database_url, "database_url")
        _require(
            bool(self.redis_prefix) and self.redis_prefix.replace("_", "").replace("-", "").isalnum(),
            "redis_prefix must be letters, digits, '-' and '_'",
        )
        _require(not self.redis_url or self.redis_url.startswith("redis://"), "redis_url must be redis://...")
        _require(bool(self.tls_cert) == bool(self.tls_key), "tls_cert and tls_key go together")

    # --- derived values -------------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        url = self.database_url or self.database.url
        if not url:
            return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'pingpull.sqlite3'}"
        if url.startswith("postgresql://"):
            return "postgresql+asyncpg://" + url.removeprefix("postgresql://")
        return url

    @property
    def is_embedded(self) -> bool:
        """True when running on the embedded defaults (SQLite, in-process bus)."""
        return self.effective_database_url.startswith("sqlite") and not self.redis_url

    @property
    def tls_files(self) -> TlsFiles | None:
        return TlsFiles(Path(self.tls_cert), Path(self.tls_key)) if self.tls_cert else None

    @property
    def media_dir(self) -> Path:
        return Path(self.media.local_dir) if self.media.local_dir else Path(self.data_dir) / "media"

    @property
    def spool_dir(self) -> Path:
        return Path(self.media.spool_dir) if self.media.spool_dir else Path(self.data_dir) / "spool"

    @property
    def keys_dir(self) -> Path:
        return Path(self.tokens.keys_dir) if self.tokens.keys_dir else Path(self.data_dir) / "keys"

    def replace(self, **changes: Any) -> Settings:
        """A copy with top-level or dotted (`content.port`) keys changed, validated again."""
        return build_settings(_merge(_as_dict(self), _nest(changes)))


# --- loading ---------------------------------------------------------------------------------------


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Defaults <- TOML file <- environment. Raises ConfigError on any unknown or invalid key."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = config_file if config_file is not None else env.get("PINGPULL_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return build_settings(_merge(data, _from_env(env)))


def build_settings(data: Mapping[str, Any]) -> Settings:
    return _build(Settings, data, "")


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    hints = typing.get_type_hints(Settings)
    sections = {name for name, hint in hints.items() if dataclasses.is_dataclass(hint)}
    top_level = set(hints) - sections
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_ENV:
            continue
        if name.startswith(NON_SETTING_ENV_PREFIXES):
            continue
        key = name.removeprefix(ENV_PREFIX).lower()
        if key in top_level:
            out[key] = value
            continue
        section, _, rest = key.partition("_")
        if section in sections and rest in _field_names(hints[section]):
            out.setdefault(section, {})[rest] = value
            continue
        raise ConfigError(f"unknown setting in environment: {name}")
    return out


def _field_names(cls: Any) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, dot, rest = key.partition(".")
        if dot:
            out.setdefault(section, {})[rest] = value
        else:
            out[key] = value
    return out


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _as_dict(obj: Any) -> dict[str, Any]:
    return {
        f.name: _as_dict(getattr(obj, f.name))
        if dataclasses.is_dataclass(getattr(obj, f.name))
        else getattr(obj, f.name)
        for f in dataclasses.fields(obj)
    }


def _build(cls: type[_T], data: Mapping[str, Any], where: str) -> _T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'settings'} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting{'s' if len(unknown) > 1 else ''}: {', '.join(where + k for k in unknown)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        target = hints[name]
        if dataclasses.is_dataclass(target):
            kwargs[name] = _build(target, value, f"{where}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(value, target, where + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid settings in {where or 'top level'}: {exc}") from exc


def _coerce(value: Any, target: Any, name: str) -> Any:
    origin = typing.get_origin(target)
    if origin is Literal:
        choices = typing.get_args(target)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{name}: unsupported setting type")  # no optional settings by design
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name} must be a boolean, not {value!r}")
    if target is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, not {value!r}")
        try:
            return int(value, 10) if isinstance(value, str) else _exact_int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be an integer, not {value!r}") from exc
    if target is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, not {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"{name} must be a number, not {value!r}") from exc
        if result != result or result in (float("inf"), float("-inf")):
            raise ConfigError(f"{name} must be a finite number")
        return result
    if target is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported setting type {target!r}")


def _exact_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("not an integer")
    return int(value)
