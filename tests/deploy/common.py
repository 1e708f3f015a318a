"""What the deploy tests share: paths, pingpull's own settings loader and CLI parser, durations."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pingpull.cli import build_parser
from pingpull.compose import SERVICES
from pingpull.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# Variables the manifests may set that are not pingpull settings.
FOREIGN_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"})

# Ports each `pingpull serve <service>` listens on, by the setting that picks it.
SERVICE_PORT = {
    "content": lambda s: s.content.port,
    "signal": lambda s: s.signal.port,
    "push": lambda s: s.push.metrics_port,
}


def load(env: Mapping[str, str], where: str) -> Settings:
    """The settings a container would start with: pingpull's own loader, which rejects unknown keys."""
    strays = sorted(k for k in env if not k.startswith("PINGPULL_") and k not in FOREIGN_ENV)
    assert not strays, f"{where}: variables that are neither PINGPULL_* settings nor known: {strays}"
    return load_settings({k: v for k, v in env.items() if k.startswith("PINGPULL_")})


def served(args: list[str], where: str) -> tuple[str, list[str]]:
    """Parse a container's arguments with pingpull's CLI: (command, services it serves)."""
    parsed = build_parser().parse_args(args)
    if parsed.command != "serve":
        return parsed.command, []
    services = parsed.services or list(SERVICES)
    unknown = set(services) - set(SERVICES)
    assert not unknown, f"{where}: `pingpull serve` knows no service {sorted(unknown)}"
    return "serve", services


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def go_duration_s(text: str) -> float:
    """A compose duration (Go syntax: 1m30s, 50s, 500ms) in seconds."""
    parts = _GO_DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)
