"""deploy/compose.yaml against the compose-spec JSON schema, its PINGPULL_* variables through
pingpull's loader, and the HAProxy in front of it against the services it balances."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml

from pingpull.config import Settings
from tests.deploy.common import DEPLOY, SERVICE_PORT, go_duration_s, load, served
from tests.support.services import unavailable

COMPOSE = DEPLOY / "compose.yaml"
HAPROXY = DEPLOY / "haproxy" / "haproxy.cfg"


def compose_schema() -> dict[str, Any]:
    """The official compose-spec schema, as check-jsonschema vendors it (its `vendor.compose-spec`)."""
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    text = vendored.joinpath("compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # anchors and << merges resolved
    return document


def pingpull_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("pingpull:")}


def settings_of(service: dict[str, Any], name: str) -> Settings:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), f"{name}: write environment as a mapping"
    return load({k: str(v) for k, v in environment.items()}, name)


def validate(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


# --- the compose file ------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    assert validate(compose) == []


def test_the_schema_check_catches_a_misspelt_key(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["gateway-1"]["depend_on"] = broken["services"]["gateway-1"].pop("depends_on")
    assert any("depend_on" in error for error in validate(broken))


def test_references_between_services_and_volumes_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes", {}))
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source and not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"


def test_the_stack_has_every_part(compose: dict[str, Any]) -> None:
    commands = {}
    for name, service in pingpull_services(compose).items():
        command, services = served(service["command"], name) if name != "keys" else ("keys", [])
        commands[name] = " ".join([command, *services])
    assert commands == {
        "keys": "keys",
        "migrate": "migrate",
        "content-1": "serve content",
        "content-2": "serve content",
        "gateway-1": "serve signal",
        "gateway-2": "serve signal",
        "push": "serve push",
    }
    images = {s["image"].split(":")[0] for s in compose["services"].values()}
    assert {"postgres", "redis", "minio/minio", "haproxy"} <= images


def test_every_pingpull_variable_loads_through_the_settings_loader(compose: dict[str, Any]) -> None:
    for name, service in pingpull_services(compose).items():
        settings = settings_of(service, name)
        if name == "keys":
            continue
        assert not settings.is_embedded, f"{name}: would run on SQLite / the in-process bus"
        assert settings.host == "0.0.0.0", name
        assert not settings.database.migrate_on_start, f"{name}: the migrate job owns migrations"
        if name.startswith("content"):
            assert settings.media.backend == "s3"
            assert settings.media.s3_endpoint_url == "http://minio:9000"


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: pin {image}"


def test_dependencies_wait_for_migrations_and_keys(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("content-1", "content-2", "push"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["keys"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_stop_grace_outlasts_the_gateway_drain(compose: dict[str, Any]) -> None:
    for name, service in pingpull_services(compose).items():
        if name in ("keys", "migrate"):
            continue
        settings = settings_of(service, name)
        grace = go_duration_s(service["stop_grace_period"])
        _, services = served(service["command"], name)
        if "signal" in services:
            assert grace > settings.signal.drain_timeout_s, f"{name}: {grace} s cuts the drain short"
            assert service["ulimits"]["nofile"]["soft"] > settings.signal.max_connections
        if "content" in services:
            assert grace > settings.content.shutdown_timeout_s, name


def test_healthchecks_probe_the_port_each_service_listens_on(compose: dict[str, Any]) -> None:
    for name, service in pingpull_services(compose).items():
        _command, services = served(service["command"], name) if name != "keys" else ("keys", [])
        if not services:
            continue
        settings = settings_of(service, name)
        port = SERVICE_PORT[services[0]](settings)
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/" in probe, f"{name}: healthcheck does not probe port {port}"
        path = "/healthz" if services == ["push"] else "/readyz"
        assert path in probe, f"{name}: healthcheck should use {path}"


# --- HAProxy ---------------------------------------------------------------------------------------


def haproxy_sections() -> dict[str, list[list[str]]]:
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for raw in HAPROXY.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        words = line.split()
        if not raw[0].isspace():
            current = sections.setdefault(" ".join(words), [])
        else:
            current.append(words)
    return sections


def haproxy_duration_s(text: str) -> float:
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", text)
    assert match, f"not an HAProxy duration: {text}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1e-3}
    return int(match[1]) * scale[match[2]]


def directive(section: list[list[str]], *words: str) -> list[str]:
    found = [line[len(words) :] for line in section if line[: len(words)] == list(words)]
    assert found, f"missing `{' '.join(words)}`"
    return found[-1]


def test_load_balancer_routes_to_the_compose_services(compose: dict[str, Any]) -> None:
    sections = haproxy_sections()
    services = pingpull_services(compose)
    for backend, service_kind in (("backend content", "content"), ("backend signal", "signal")):
        servers = [line for line in sections[backend] if line[0] == "server"]
        replicas = {
            n for n, s in services.items() if n != "keys" and served(s["command"], n)[1] == [service_kind]
        }
        assert {line[1] for line in servers} == replicas, f"{backend} must balance over {replicas}"
        for line in servers:
            host, port = line[2].rsplit(":", 1)
            assert host in services, f"{backend}: {host} is no compose service"
            settings = settings_of(services[host], host)
            assert int(port) == SERVICE_PORT[service_kind](settings), f"{backend}: {host} port"
            if service_kind == "content":
                assert directive([line], "server", line[1], line[2], "proto") == ["h2"], "h2c to content"
        assert directive(sections[backend], "option", "httpchk") == ["GET", "/readyz"]
    published = {p.split(":")[0] for p in compose["services"]["lb"]["ports"]}
    binds = {directive(sections[f"frontend {n}"], "bind")[0].lstrip(":") for n in ("content", "signal")}
    assert binds <= published


def test_load_balancer_timeouts_fit_the_signal_transports(compose: dict[str, Any]) -> None:
    sections = haproxy_sections()
    settings = settings_of(compose["services"]["gateway-1"], "gateway-1")
    signal = sections["backend signal"]
    assert directive(signal, "balance") == ["leastconn"], "long-lived connections: balance on count"
    heartbeat = settings.signal.ping_interval_s + settings.signal.ping_timeout_s
    # WebSocket after the upgrade: only the tunnel timeout applies; pings keep it alive.
    assert haproxy_duration_s(directive(signal, "timeout", "tunnel")[0]) > 2 * heartbeat
    # SSE and long-poll are responses that may be silent for a whole poll or heartbeat.
    quiet = max(settings.signal.poll_max_timeout_s, settings.signal.ping_interval_s)
    assert haproxy_duration_s(directive(signal, "timeout", "server")[0]) > quiet
    assert haproxy_duration_s(directive(sections["frontend signal"], "timeout", "client")[0]) > quiet
    content = settings_of(compose["services"]["content-1"], "content-1")
    content_timeout = directive(sections["backend content"], "timeout", "server")[0]
    assert haproxy_duration_s(content_timeout) > content.content.request_timeout_s
    # A stopping HAProxy must outlive a gateway drain.
    hard_stop = haproxy_duration_s(directive(sections["global"], "hard-stop-after")[0])
    assert hard_stop > settings.signal.drain_timeout_s


def test_haproxy_accepts_the_configuration() -> None:
    if shutil.which("haproxy") is None:  # .ci/run installs it; a laptop may not have it
        unavailable("haproxy (apt-get install haproxy)", "not on PATH")
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    warnings = [
        line
        for line in result.stderr.splitlines()
        if "WARNING" in line and "could not resolve address" not in line  # compose DNS names
    ]
    assert warnings == []
