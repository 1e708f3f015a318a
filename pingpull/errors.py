"""The kernel's exception root.

Every error the kernel raises on purpose derives from `PingpullError`, so service code can catch
kernel failures in one place and translate them at its own boundary (HTTP problem, close code, log).
"""

from __future__ import annotations


class PingpullError(Exception):
    """Root of every error raised on purpose by the `pingpull` kernel."""


class ConfigError(PingpullError):
    """Settings are missing, malformed, out of range, or name an unknown key."""


class ProtocolError(PingpullError):
    """Bytes on the wire do not follow the signal frame format."""


class TokenError(PingpullError):
    """An access token is missing, malformed, forged, expired, or signed by an unknown key."""


class BridgeError(PingpullError):
    """The asyncio bridge is not running or was shut down under a caller."""
