"""docs/operations.md keeps up with the code: every Prometheus metric the services define is listed."""

from __future__ import annotations

import re

from tests.deploy.common import OPERATIONS_DOC, ROOT

_METRIC = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary)\(\s*\"(pingpull_\w+)\"")


def test_every_metric_is_in_the_operations_guide() -> None:
    defined = set()
    for package in ("pingpull", "signal_svc", "content_svc", "push_bridge"):
        for source in (ROOT / package).rglob("*.py"):
            defined |= set(_METRIC.findall(source.read_text()))
    assert len(defined) >= 20
    documented = OPERATIONS_DOC.read_text()
    missing = sorted(name for name in defined if f"`{name}" not in documented)
    assert not missing, f"docs/operations.md does not list these metrics: {missing}"
