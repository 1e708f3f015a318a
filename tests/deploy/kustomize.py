"""A small kustomize: renders the subset of kustomization.yaml that deploy/k8s uses, in Python.

The deploy tests must run where no kustomize binary exists, so this renders `resources`
(files and directories), `namespace`, `labels`, `configMapGenerator` (envs, literals, behavior
create/merge/replace, with kustomize's content-hash name suffix and the references to it rewritten),
`images`, `replicas` and JSON 6902 `patches`. Anything else in a kustomization is refused, so a
field added to the manifests cannot be silently ignored here. Where `kubectl` is installed, the
tests check that this renders exactly what `kubectl kustomize` renders.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

_SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "configMapGenerator",
    "images",
    "replicas",
    "patches",
}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
_GENERATED = "__generated_name__"  # internal marker: the ConfigMap's name before the hash suffix


class KustomizeError(Exception):
    """A kustomization this renderer cannot build, or would build differently from kustomize."""


def render(directory: Path) -> list[Resource]:
    """Everything the kustomization in `directory` builds, as kubectl kustomize would emit it."""
    resources = _build(directory)
    _apply_name_hashes(resources)
    return resources


def _build(directory: Path) -> list[Resource]:
    path = directory / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - _SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{path}: not a Kustomization")

    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources += _build(target)
        else:
            resources += [doc for doc in yaml.safe_load_all(target.read_text()) if doc]

    for generator in spec.get("configMapGenerator", []):
        _generate_config_map(directory, generator, resources)

    if "namespace" in spec:
        for res in resources:
            if res["kind"] not in _CLUSTER_SCOPED:
                res["metadata"]["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        _apply_labels(label, resources)
    for image in spec.get("images", []):
        for container in _containers(resources):
            container["image"] = _new_image(container["image"], image)
    for replica in spec.get("replicas", []):
        matches = [
            r for r in resources if r["metadata"]["name"] == replica["name"] and "replicas" in r["spec"]
        ]
        if not matches:
            raise KustomizeError(f"replicas: no workload named {replica['name']} with spec.replicas")
        for res in matches:
            res["spec"]["replicas"] = replica["count"]
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, resources)
    return resources


# --- generators ------------------------------------------------------------------------------------


def _generate_config_map(directory: Path, generator: dict[str, Any], resources: list[Resource]) -> None:
    unknown = set(generator) - {"name", "envs", "literals", "behavior"}
    if unknown:
        raise KustomizeError(f"configMapGenerator: fields not implemented: {sorted(unknown)}")
    data: dict[str, str] = {}
    for env_file in generator.get("envs", []):
        data.update(parse_env_file(directory / env_file))
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    name = generator["name"]
    behavior = generator.get("behavior", "create")
    existing = [r for r in resources if r["kind"] == "ConfigMap" and r["metadata"].get(_GENERATED) == name]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"configMapGenerator {name}: already exists (use behavior: merge)")
        metadata = {"name": name, _GENERATED: name}
        resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    elif behavior in ("merge", "replace"):
        if len(existing) != 1:
            raise KustomizeError(f"configMapGenerator {name}: behavior {behavior} needs one to {behavior}")
        if behavior == "merge":
            existing[0]["data"].update(data)
        else:
            existing[0]["data"] = data
    else:
        raise KustomizeError(f"configMapGenerator {name}: unknown behavior {behavior}")


def parse_env_file(path: Path) -> dict[str, str]:
    """kustomize's env file format: KEY=VALUE lines, `#` comments and blank lines skipped, no quoting."""
    data: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise KustomizeError(f"{path}:{number}: not KEY=VALUE")
        data[key] = value
    return data


def config_map_hash(config_map: Resource) -> str:
    """kustomize's name suffix: sha256 of the Go JSON encoding, first 10 hex digits, vowels avoided.

    kustomize (api/hasher) looks the name up as the single field "metadata/name", finds nothing and
    hashes an empty name: only the data decides the suffix. Reproduced as it is."""
    encoded: dict[str, Any] = {"data": config_map.get("data", {}), "kind": "ConfigMap", "name": ""}
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's json.Marshal escapes HTML characters and the JavaScript line separators.
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028")):
        text = text.replace(char, escape)
    text = text.replace("\u2029", "\\u2029")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _apply_name_hashes(resources: list[Resource]) -> None:
    renamed: dict[tuple[str | None, str], str] = {}
    for res in resources:
        original = res["metadata"].pop(_GENERATED, None)
        if original is None:
            continue
        res["metadata"]["name"] = f"{original}-{config_map_hash(res)}"
        renamed[(res["metadata"].get("namespace"), original)] = res["metadata"]["name"]
    for res in resources:
        namespace = res["metadata"].get("namespace")
        for pod in _pod_specs([res]):
            for ref in _config_map_refs(pod):
                ref["name"] = renamed.get((namespace, ref["name"]), ref["name"])


def _config_map_refs(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield source["configMapRef"]
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("configMapKeyRef")
            if ref is not None:
                yield ref
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield volume["configMap"]
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                yield source["configMap"]


# --- transformers ----------------------------------------------------------------------------------


def _apply_labels(label: dict[str, Any], resources: list[Resource]) -> None:
    if label.get("includeSelectors"):
        raise KustomizeError("labels.includeSelectors is not implemented")
    pairs = label["pairs"]
    for res in resources:
        res["metadata"].setdefault("labels", {}).update(pairs)
        if label.get("includeTemplates"):
            for template in _pod_templates([res]):
                template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _new_image(current: str, image: dict[str, Any]) -> str:
    name, tag = _split_image(current)
    if name != image["name"]:
        return current
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return name + tag


def _split_image(image: str) -> tuple[str, str]:
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _apply_patch(directory: Path, patch: dict[str, Any], resources: list[Resource]) -> None:
    unknown = set(patch) - {"target", "patch", "path"}
    if unknown:
        raise KustomizeError(f"patches: fields not implemented: {sorted(unknown)}")
    text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError("patches: only JSON 6902 patches (a list of operations) are implemented")
    target = patch["target"]
    matched = [
        r
        for r in resources
        if all(r["metadata"]["name"] == v if k == "name" else r.get(k) == v for k, v in target.items())
    ]
    if not matched:
        raise KustomizeError(f"patches: no resource matches {target}")
    for res in matched:
        for operation in operations:
            json_patch(res, operation)


def json_patch(document: Resource, operation: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, replace, remove) applied in place."""
    op, pointer = operation["op"], operation["path"]
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    if not parts:
        raise KustomizeError("json patch: the root cannot be patched")
    parent: Any = document
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise KustomizeError(f"json patch: op {op} not implemented")
        return
    if op in ("replace", "remove") and last not in parent:
        raise KustomizeError(f"json patch: {pointer} does not exist")
    if op in ("add", "replace"):
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del parent[last]
    else:
        raise KustomizeError(f"json patch: op {op} not implemented")


# --- walking ---------------------------------------------------------------------------------------


def _pod_templates(resources: list[Resource]) -> Iterator[dict[str, Any]]:
    for res in resources:
        if res["kind"] in _POD_TEMPLATE_KINDS:
            yield res["spec"]["template"]
        elif res["kind"] == "CronJob":
            yield res["spec"]["jobTemplate"]["spec"]["template"]


def _pod_specs(resources: list[Resource]) -> Iterator[dict[str, Any]]:
    for template in _pod_templates(resources):
        yield template["spec"]


def _containers(resources: list[Resource]) -> Iterator[dict[str, Any]]:
    for pod in _pod_specs(resources):
        yield from pod.get("containers", [])
        yield from pod.get("initContainers", [])


def pod_specs(resources: list[Resource]) -> Iterator[tuple[Resource, dict[str, Any]]]:
    """(workload, its pod spec) for every workload."""
    for res in resources:
        for template in _pod_templates([res]):
            yield res, template["spec"]
