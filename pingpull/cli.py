"""The `pingpull` command: serve, migrate, account create, keys create.

Every flag has a PINGPULL_* environment equivalent; flags win over the environment, which wins over
the TOML file (`--config` / PINGPULL_CONFIG), which wins over the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from pingpull import compose, logs
from pingpull.config import Settings, load_settings
from pingpull.db import migrate
from pingpull.errors import PingpullError
from pingpull.tokens import create_key

log = logging.getLogger("pingpull")


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (env PINGPULL_CONFIG)")
    parser.add_argument("--data-dir", help="embedded data directory (env PINGPULL_DATA_DIR, ./pingpull-data)")
    parser.add_argument(
        "--database-url",
        help="sqlite+aiosqlite:///... or postgresql+asyncpg://... (env PINGPULL_DATABASE_URL)",
    )
    parser.add_argument("--log-format", choices=("text", "json"), help="env PINGPULL_LOG_FORMAT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pingpull", description=__doc__.split("\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run services (all three by default)")
    serve.add_argument("services", nargs="*", metavar="service", help="content, signal, push (default: all)")
    _settings_flags(serve)
    serve.add_argument("--host", help="listen address for every service (env PINGPULL_HOST, 127.0.0.1)")
    serve.add_argument(
        "--content-port", type=int, help="0 picks a free port (env PINGPULL_CONTENT_PORT, 8080)"
    )
    serve.add_argument("--signal-port", type=int, help="0 picks a free port (env PINGPULL_SIGNAL_PORT, 8081)")
    serve.add_argument("--redis-url", help="Redis for the signal bus across nodes (env PINGPULL_REDIS_URL)")
    serve.add_argument(
        "--tls-cert", help="PEM certificate chain: https, h2, HTTP/3, wss (env PINGPULL_TLS_CERT)"
    )
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert (env PINGPULL_TLS_KEY)")
    serve.add_argument(
        "--dev-tls",
        action="store_true",
        help="make a local CA and certificate under the data dir and serve TLS",
    )

    migrate_cmd = commands.add_parser("migrate", help="upgrade the database schema to the newest revision")
    _settings_flags(migrate_cmd)
    migrate_cmd.add_argument("--revision", default="head")

    account = commands.add_parser("account", help="manage accounts")
    account_commands = account.add_subparsers(dest="account_command", required=True)
    create = account_commands.add_parser(
        "create", help="create a user and its first device; prints its token"
    )
    create.add_argument("handle")
    create.add_argument("--device-name", default="")
    _settings_flags(create)

    chat = commands.add_parser("chat", help="send and watch messages from a terminal")
    chat.add_argument("--as", dest="handle", required=True, help="your handle (registered on first use)")
    chat.add_argument("--to", type=int, help="user id to talk to (a direct conversation)")
    chat.add_argument("--content-url", default="http://127.0.0.1:8080")
    chat.add_argument("--signal-url", default="http://127.0.0.1:8081")
    chat.add_argument(
        "--state-dir", default="./pingpull-data/chat", help="where credentials and the cursor live"
    )

    keys = commands.add_parser("keys", help="manage token signing keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_create = keys_commands.add_parser("create", help="write a new Ed25519 key pair into the keys dir")
    keys_create.add_argument("--keys-dir", help="default: <data dir>/keys")
    _settings_flags(keys_create)

    bench = commands.add_parser("bench", help="benchmarks (from a source checkout): protocols, e2e")
    bench.add_argument("benchmark", choices=("protocols", "e2e"))
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's own flags (try --help)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = load_settings(config_file=args.config)
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("data_dir", "data_dir"),
        ("database_url", "database_url"),
        ("log_format", "log_format"),
        ("host", "host"),
        ("redis_url", "redis_url"),
        ("keys_dir", "tokens.keys_dir"),
        ("content_port", "content.port"),
        ("tls_cert", "tls_cert"),
        ("tls_key", "tls_key"),
        ("signal_port", "signal.port"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    host = overrides.get("host")
    if host is not None:
        overrides["content.host"] = overrides["signal.host"] = host
    elif settings.host != "127.0.0.1":
        overrides["content.host"] = overrides["signal.host"] = settings.host
    return settings.replace(**overrides) if overrides else settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "chat":
        return _chat(args)
    if args.command == "bench":
        return _bench(args.benchmark, args.bench_args)
    try:
        settings = settings_from_args(args)
        logs.configure(settings.log_format, settings.log_level)
        if args.command == "serve":
            if args.dev_tls:
                settings = _dev_tls(settings)
            compose.prepare(settings)
            trio.run(compose.serve, settings, args.services or compose.SERVICES)
        elif args.command == "migrate":
            migrate.upgrade(settings.effective_database_url, args.revision)
            logs.event(
                log,
                "migrated",
                revision=args.revision,
                database=settings.effective_database_url.split("://")[0],
            )
        elif args.command == "account":
            compose.prepare(settings)
            print(json.dumps(trio.run(_create_account, settings, args.handle, args.device_name)))
        elif args.command == "keys":
            kid = create_key(settings.keys_dir)
            print(json.dumps({"kid": kid, "keys_dir": str(Path(settings.keys_dir).resolve())}))
    except PingpullError as exc:
        print(f"pingpull: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # raised from inside a service's nursery
        matched, rest = group.split(PingpullError)
        if matched is None or rest is not None:
            raise
        for leaf in _leaves(matched):
            print(f"pingpull: {leaf}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _dev_tls(settings: Settings) -> Settings:
    from pingpull.tls import dev_tls

    files, ca = dev_tls(Path(settings.data_dir) / "dev-tls", ["localhost", "127.0.0.1", "::1"])
    print(
        f"pingpull: serving TLS with a development certificate signed by {ca}\n"
        f"  curl:   curl --cacert {ca} https://localhost:{settings.content.port}/healthz\n"
        f"  python: ssl.create_default_context(cafile={str(ca)!r})\n"
        f"  system: copy {ca} into /usr/local/share/ca-certificates/pingpull-dev.crt; update-ca-certificates",
        file=sys.stderr,
    )
    return settings.replace(tls_cert=str(files.cert), tls_key=str(files.key))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _chat(args: argparse.Namespace) -> int:
    from pingpull.client.chat import chat
    from pingpull.client.errors import ClientError

    logs.configure("text", "WARNING")
    try:
        trio.run(chat, args.handle, args.content_url, args.signal_url, Path(args.state_dir), args.to)
    except ClientError as exc:
        print(f"pingpull chat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _bench(benchmark: str, argv: list[str]) -> int:
    """bench/ sits next to the package in a source checkout; imported only when asked for."""
    import importlib

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module("bench.protocols.run" if benchmark == "protocols" else "bench.e2e")
    except ImportError as exc:
        print(f"pingpull bench: needs a source checkout with bench/ ({exc})", file=sys.stderr)
        return 2
    status: int = module.main(argv, prog=f"pingpull bench {benchmark}")
    return status


async def _create_account(settings: Settings, handle: str, device_name: str) -> dict[str, Any]:
    from pydantic import ValidationError

    from content_svc import store
    from content_svc.context import wall_clock_ms
    from content_svc.errors import ContentError
    from content_svc.schemas import CreateAccount

    try:
        CreateAccount(handle=handle, device_name=device_name)
    except ValidationError as exc:
        raise PingpullError(f"invalid handle or device name: {exc.errors()[0]['msg']}") from exc
    async with compose.open_kernel(settings) as kernel:
        assert kernel.database is not None
        try:
            user_id, device_id = await kernel.database.transaction(
                store.create_account, handle, device_name, wall_clock_ms()
            )
        except ContentError as exc:
            raise PingpullError(exc.detail) from exc
        token = compose.content_context(kernel).signer.mint(user_id, device_id)
    return {"user_id": user_id, "device_id": device_id, "token": token}


if __name__ == "__main__":
    sys.exit(main())
