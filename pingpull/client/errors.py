"""The client SDK's exception root."""

from __future__ import annotations

from typing import Any

from pingpull.errors import PingpullError


class ClientError(PingpullError):
    """Root of every error the client SDK raises."""


class ApiError(ClientError):
    """The server answered with a problem (RFC 9457)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.type = str(problem.get("type", ""))
        self.slug = self.type.rsplit("/", 1)[-1]
        errors = problem.get("errors")
        suffix = f" {errors}" if errors else ""
        super().__init__(f"{status} {self.slug}: {problem.get('detail', '')}{suffix}")


class TransportError(ClientError):
    """The server could not be reached, or the connection broke."""
