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
        super().__init__(f"{status} {self.slug}: {problem.get('detail', '')}")


class TransportError(ClientError):
    """The server could not be reached, or the connection broke."""
