"""The gateway's exception root. Errors become an HTTP problem (before an upgrade) or a close code."""

from __future__ import annotations


class SignalError(Exception):
    """Root of every error the gateway raises on purpose."""


class HttpRefusal(SignalError):
    """Refuse a request with an HTTP status and a problem+json body, before any upgrade."""

    def __init__(
        self, status: int, slug: str, detail: str, *, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(f"{status} {slug}: {detail}")
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or []


class ConnectionGone(SignalError):
    """The peer closed or reset the connection, or it was dropped (ghost, slow consumer, drain)."""
