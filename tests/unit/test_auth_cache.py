"""The content service's cache of verified tokens: one signature check per token string, the expiry
checked on every use, and nothing else trusted from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from content_svc.auth import DeviceCache
from pingpull.errors import TokenError
from pingpull.tokens import Claims, TokenVerifier, create_key, load_keys

FUTURE = 4_000_000_000  # far beyond the wall clock, so PyJWT's own checks never decide a test


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingVerifier(TokenVerifier):
    calls = 0

    def verify(self, token: str) -> Claims:
        self.calls += 1
        return super().verify(token)


@pytest.fixture
def clock() -> Clock:
    return Clock(FUTURE)


@pytest.fixture
def minted(tmp_path: Path, clock: Clock) -> tuple[str, CountingVerifier]:
    create_key(tmp_path)
    ring = load_keys(tmp_path)
    signer = ring.signer(ttl_s=3600, issuer="pingpull", clock=clock)
    verifier = CountingVerifier(ring.public_keys, issuer="pingpull", leeway_s=30, clock=clock)
    return signer.mint(7, 11), verifier


def test_a_token_is_verified_once_then_served_from_the_cache(minted: tuple[str, CountingVerifier]) -> None:
    token, verifier = minted
    cache = DeviceCache()
    first = cache.verify(verifier, token)
    again = cache.verify(verifier, token)
    assert first == again
    assert (first.user_id, first.device_id) == (7, 11)
    assert verifier.calls == 1


def test_a_cached_token_still_expires(minted: tuple[str, CountingVerifier], clock: Clock) -> None:
    token, verifier = minted
    cache = DeviceCache()
    cache.verify(verifier, token)
    clock.now += 3600 + 31  # past exp + leeway
    with pytest.raises(TokenError, match="expired"):
        cache.verify(verifier, token)
    clock.now -= 3600  # even if the clock steps back, the entry is gone: verified afresh
    cache.verify(verifier, token)
    assert verifier.calls == 2


def test_an_altered_token_is_not_served_from_the_cache(minted: tuple[str, CountingVerifier]) -> None:
    token, verifier = minted
    cache = DeviceCache()
    cache.verify(verifier, token)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(TokenError):
        cache.verify(verifier, forged)
    assert verifier.calls == 2


def test_recall_returns_only_verified_unexpired_claims_and_never_verifies(
    minted: tuple[str, CountingVerifier], clock: Clock
) -> None:
    token, verifier = minted
    cache = DeviceCache()
    assert cache.recall(verifier, token) is None  # never verified here: the caller must verify
    claims = cache.verify(verifier, token)
    assert cache.recall(verifier, token) == claims
    clock.now += 3600 + 31
    assert cache.recall(verifier, token) is None
    assert verifier.calls == 1
