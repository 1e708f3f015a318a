"""The push bridge's exception root."""

from __future__ import annotations


class PushError(Exception):
    """Root of every error the push bridge raises on purpose."""


class ProviderConfigError(PushError):
    """A provider's credentials or settings are missing or unusable (fails at start, not per push)."""
