"""deploy/k8s: rendered like kustomize, validated against the Kubernetes schemas, and checked against
pingpull's own settings (every PINGPULL_* variable through the real loader, ports, drain timing)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pingpull.config import Settings
from tests.deploy.common import DEPLOY, OPERATIONS_DOC, SERVICE_PORT, load, served
from tests.deploy.kustomize import Resource, parse_env_file, pod_specs, render

K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "production"]
# The oldest Kubernetes the manifests promise to work on, and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

# Values standing in for Secrets when the settings are loaded (the real ones are never in git).
SECRET_VALUES = {
    ("pingpull-database", "url"): "postgresql+asyncpg://pingpull:secret@postgres.example:5432/pingpull",
    ("pingpull-redis", "url"): "redis://redis.example:6379/0",
}
# The Dockerfile's `USER` (tested there); pods must run as the same uid.
IMAGE_UID = 10001


def _id(path: Path) -> str:
    return str(path.relative_to(K8S))


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=_id)
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    return render(request.param)


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def containers(resources: list[Resource]) -> Iterator[tuple[Resource, dict[str, Any], dict[str, Any]]]:
    for workload, pod in pod_specs(resources):
        for container in pod["containers"] + pod.get("initContainers", []):
            yield workload, pod, container


def container_env(resources: list[Resource], container: dict[str, Any], where: str) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom first, then env (which wins)."""
    config_maps = {r["metadata"]["name"]: r.get("data", {}) for r in of_kind(resources, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in config_maps, f"{where}: envFrom names a missing ConfigMap {name}"
            env.update(config_maps[name])
        else:
            assert source["secretRef"].get("optional"), f"{where}: a required secretRef in envFrom"
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"].get("secretKeyRef") or var["valueFrom"].get("configMapKeyRef")
        assert ref is not None, f"{where}: {var['name']} comes from neither a Secret nor a ConfigMap"
        if "secretKeyRef" in var["valueFrom"]:
            key = (ref["name"], ref["key"])
            assert key in SECRET_VALUES, f"{where}: {var['name']} from an unknown Secret key {key}"
            env[var["name"]] = SECRET_VALUES[key]
        else:
            env[var["name"]] = config_maps[ref["name"]][ref["key"]]
    return env


def container_settings(resources: list[Resource], container: dict[str, Any], where: str) -> Settings:
    return load(container_env(resources, container, where), where)


def sleep_s(container: dict[str, Any]) -> float:
    """The preStop hook's sleep, in seconds (0 without a hook)."""
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"preStop is not a plain sleep: {command}"
    return float(command[1])


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"container {container['name']} has no port named {port}"
    return int(numbers[0])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- schema ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(rendered: list[Resource], version: str) -> None:
    assert rendered
    for resource in rendered:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            pytest.fail(f"{name} is not a valid Kubernetes {version} object: {exc.message}")


def test_a_misspelt_field_is_caught_by_the_schema_check(rendered: list[Resource]) -> None:
    """The check above must be able to fail: strict validation refuses unknown fields."""
    deployment = copy.deepcopy(of_kind(rendered, "Deployment")[0])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize built in) is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_the_python_renderer_matches_kubectl_kustomize(directory: Path) -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr

    def key(resource: Resource) -> tuple[str, str, str]:
        meta = resource["metadata"]
        return resource["kind"], meta.get("namespace", ""), meta["name"]

    theirs = sorted((doc for doc in yaml.safe_load_all(result.stdout) if doc), key=key)
    assert sorted(render(directory), key=key) == theirs


# --- settings --------------------------------------------------------------------------------------


def test_every_pingpull_variable_loads_through_the_settings_loader(rendered: list[Resource]) -> None:
    seen = 0
    for workload, _pod, container in containers(rendered):
        where = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
        settings = container_settings(rendered, container, where)
        assert settings.log_format == "json", where
        assert settings.host == "0.0.0.0", f"{where}: must listen on every interface in a pod"
        assert not settings.is_embedded, f"{where}: would run on SQLite / the in-process bus"
        seen += 1
    assert seen == 4  # content, gateway, push, migrate


def test_env_files_hold_only_pingpull_settings() -> None:
    for env_file in sorted(K8S.rglob("*.env")):
        data = parse_env_file(env_file)
        assert data and all(k.startswith("PINGPULL_") for k in data), env_file
        load(data, str(env_file))  # each file alone is also a valid set of settings


def test_commands_are_pingpull_commands_and_ports_match_the_settings(rendered: list[Resource]) -> None:
    commands: dict[str, str] = {}
    for workload, _pod, container in containers(rendered):
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert "command" not in container, f"{where}: keep the image's entrypoint (it raises nofile)"
        command, services = served(container["args"], where)
        commands[workload["metadata"]["name"]] = " ".join([command, *services])
        settings = container_settings(rendered, container, where)
        expected = {SERVICE_PORT[s](settings) for s in services}
        declared = {p["containerPort"] for p in container.get("ports", [])}
        assert declared == expected, f"{where}: ports {declared}, but the settings listen on {expected}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:
                port = named_port(container, container[probe]["httpGet"]["port"])
                assert port in expected, f"{where}: {probe} on {port}, not a port it listens on"
    assert commands == {
        "pingpull-migrate": "migrate",
        "pingpull-content": "serve content",
        "pingpull-gateway": "serve signal",
        "pingpull-push": "serve push",
    }


def test_probes_use_healthz_for_liveness_and_readyz_for_readiness(rendered: list[Resource]) -> None:
    for workload, _pod, container in containers(rendered):
        if workload["kind"] != "Deployment":
            continue
        name = workload["metadata"]["name"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        if name == "pingpull-push":  # serves /metrics and /healthz only, and takes no traffic
            assert "readinessProbe" not in container
        else:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name


def test_grace_period_outlasts_prestop_plus_the_drain(rendered: list[Resource]) -> None:
    """SIGKILL must not cut a drain short: grace > preStop sleep + the service's own shutdown time."""
    checked = set()
    for workload, pod, container in containers(rendered):
        if workload["kind"] != "Deployment":
            continue
        name = workload["metadata"]["name"]
        settings = container_settings(rendered, container, name)
        _, services = served(container["args"], name)
        grace = pod["terminationGracePeriodSeconds"]
        pre_stop = sleep_s(container)
        if "signal" in services:
            assert pre_stop >= 5, f"{name}: needs a preStop sleep so load balancers stop routing first"
            needed = pre_stop + settings.signal.drain_timeout_s
            assert settings.signal.drain_window_s < settings.signal.drain_timeout_s
            checked.add("signal")
        elif "content" in services:
            assert pre_stop >= 1, f"{name}: needs a preStop sleep so load balancers stop routing first"
            needed = pre_stop + settings.content.shutdown_timeout_s
            checked.add("content")
        else:
            needed = pre_stop + 5
        assert grace > needed, f"{name}: terminationGracePeriodSeconds {grace} <= {needed} s needed"
    assert checked == {"signal", "content"}


def test_push_pool_covers_its_concurrency(rendered: list[Resource]) -> None:
    """One finish transaction per in-flight push: a smaller pool opens and closes overflow
    connections all the time (bench/results/push.md measured 1.54x without that churn)."""
    for workload, _pod, container in containers(rendered):
        if workload["metadata"]["name"] == "pingpull-push":
            settings = container_settings(rendered, container, "push")
            assert settings.database.pool_size >= settings.push.concurrency


def test_key_and_data_directories_are_mounted(rendered: list[Resource]) -> None:
    for workload, pod, container in containers(rendered):
        name = workload["metadata"]["name"]
        settings = container_settings(rendered, container, name)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        for mount in mounts.values():
            assert mount["name"] in volumes, f"{name}: mounts undeclared volume {mount['name']}"
        for writable in (settings.data_dir, str(settings.spool_dir)):
            owner = max((p for p in mounts if writable == p or writable.startswith(p + "/")), key=len)
            assert "emptyDir" in volumes[mounts[owner]["name"]], f"{name}: {writable} is not writable"
        _, services = served(container["args"], name)
        if not services:
            continue  # migrate needs no keys
        keys = mounts.get(str(settings.keys_dir))
        assert keys is not None, f"{name}: nothing mounted at tokens.keys_dir {settings.keys_dir}"
        secret = volumes[keys["name"]]["secret"]["secretName"]
        # Only the content service signs; everyone else gets the public keys alone.
        expected = "pingpull-signing-keys" if "content" in services else "pingpull-verify-keys"
        assert secret == expected, f"{name}: keys from {secret}, expected {expected}"


def test_push_credentials_files_are_where_the_settings_look(rendered: list[Resource]) -> None:
    for workload, pod, container in containers(rendered):
        if workload["metadata"]["name"] != "pingpull-push":
            continue
        settings = container_settings(rendered, container, "push")
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        for path in (settings.push.apns_key_file, settings.push.fcm_service_account_file):
            if path:
                assert any(path.startswith(m + "/") for m in mounts), f"{path} is not on a mounted volume"
        if settings.push.provider == "live":
            volume = next(v for v in pod["volumes"] if v["name"] == "push-credentials")
            assert volume["secret"]["secretName"] == "pingpull-push-credentials"


def test_every_referenced_secret_is_documented() -> None:
    text = OPERATIONS_DOC.read_text()
    names: set[str] = set()
    for directory in KUSTOMIZATIONS:
        for _workload, pod, container in containers(render(directory)):
            names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
            names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
            names |= {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
    assert names
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/operations.md does not say how to create: {missing}"


# --- workloads -------------------------------------------------------------------------------------


def test_pods_run_as_the_image_user_with_limits(rendered: list[Resource]) -> None:
    for workload, pod, container in containers(rendered):
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID, name
        assert pod.get("automountServiceAccountToken") is False, name
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, f"{name}: {kind}"


def test_services_pdbs_and_autoscaler_point_at_real_pods(rendered: list[Resource]) -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind(rendered, "Deployment")}
    pods = {
        name: (d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"]["containers"][0])
        for name, d in deployments.items()
    }
    for deployment in deployments.values():
        assert selects(deployment["spec"]["selector"]["matchLabels"], pods[deployment["metadata"]["name"]][0])
    for service in of_kind(rendered, "Service"):
        targets = [c for labels, c in pods.values() if selects(service["spec"]["selector"], labels)]
        assert len(targets) == 1, f"Service {service['metadata']['name']} selects {len(targets)} deployments"
        for port in service["spec"]["ports"]:
            named_port(targets[0], port["targetPort"])
    covered = set()
    for pdb in of_kind(rendered, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [n for n, (labels, _) in pods.items() if selects(selector, labels)]
        assert len(matched) == 1, f"PDB {pdb['metadata']['name']} selects {matched}"
        covered |= set(matched)
    assert covered == set(deployments), "every Deployment has a PodDisruptionBudget"
    (hpa,) = of_kind(rendered, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] == "pingpull-content"
    assert "replicas" not in deployments["pingpull-content"]["spec"], "the HPA owns content's replicas"
    assert hpa["spec"]["minReplicas"] >= 2


def test_rollouts_never_drop_below_the_wanted_count(rendered: list[Resource]) -> None:
    for deployment in of_kind(rendered, "Deployment"):
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0, deployment["metadata"]["name"]
    (gateway,) = (d for d in of_kind(rendered, "Deployment") if d["metadata"]["name"] == "pingpull-gateway")
    # One gateway's devices move at a time.
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 1
    assert gateway["spec"]["minReadySeconds"] >= 5


def test_the_production_overlay_pins_its_image() -> None:
    for _workload, _pod, container in containers(render(K8S / "overlays" / "production")):
        image = container["image"]
        assert re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", image.split("/")[-1]), image
        assert not image.endswith(":latest"), image
