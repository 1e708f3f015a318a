"""Report helpers every benchmark shares: the machine, the library versions, the code measured."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def code_version() -> str:
    """The commit under test, and whether the tree it runs from differs (others edit concurrently)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            ).stdout.rstrip("\n")
        except OSError:
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [
        line[3:]
        for line in git("status", "--porcelain").splitlines()
        if not line[3:].startswith(("bench/", "docs/", "tests/"))
    ]
    if dirty:
        shown = ", ".join(dirty[:6]) + (", ..." if len(dirty) > 6 else "")
        return f"- code: commit {commit} plus uncommitted changes outside bench/ ({shown})"
    return f"- code: commit {commit} (no uncommitted changes outside bench/)"


def write_report(text: str, output: Path | None) -> None:
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        print(f"written to {output}", file=sys.stderr)
