"""Bearer-token authentication for content routes.

The signature check is local (public key) but costs an Ed25519 verification (~0.1 ms of CPU, 8-10%
of the server's samples in the e2e benchmark's profile), and an app sends the same token with every
request: verified tokens are remembered (bounded, by the whole token string, so a different or
altered token is verified afresh) and only their expiry is checked again. The "does this device
still exist" check needs the database, so positive answers are cached briefly. A token whose device
is gone (a wiped database behind a kept key) gets 401, never a 500 from a dangling foreign key.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from quart import request

from content_svc import store
from content_svc.context import ContentContext
from content_svc.errors import Unauthorized
from pingpull.errors import TokenError
from pingpull.tokens import Claims, TokenVerifier

_KNOWN_DEVICE_TTL_S = 60.0
_KNOWN_DEVICE_MAX = 100_000
_VERIFIED_TOKENS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    device_id: int


class DeviceCache:
    """(user, device) pairs recently confirmed to exist, bounded and time-limited; and the claims of
    recently verified tokens, bounded (least recently used out)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[int, int], float] = OrderedDict()
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    def verify(self, verifier: TokenVerifier, token: str) -> Claims:
        """The token's claims: checked signature (once per token string) and expiry (every time)."""
        claims = self._verified.get(token)
        if claims is None:
            claims = verifier.verify(token)
            self._verified[token] = claims
            if len(self._verified) > _VERIFIED_TOKENS_MAX:
                self._verified.popitem(last=False)
        else:
            try:
                verifier.check_expiry(claims)
            except TokenError:
                del self._verified[token]
                raise
            self._verified.move_to_end(token)
        return claims

    def recall(self, verifier: TokenVerifier, token: str) -> Claims | None:
        """The claims of a token verified before and not yet expired; None otherwise (no signature
        is checked here, so a caller that gets None must take the path that verifies)."""
        claims = self._verified.get(token)
        if claims is None:
            return None
        try:
            verifier.check_expiry(claims)
        except TokenError:
            return None
        return claims

    def fresh(self, key: tuple[int, int]) -> bool:
        seen_at = self._seen.get(key)
        if seen_at is None or time.monotonic() - seen_at > _KNOWN_DEVICE_TTL_S:
            return False
        self._seen.move_to_end(key)
        return True

    def remember(self, key: tuple[int, int]) -> None:
        self._seen[key] = time.monotonic()
        self._seen.move_to_end(key)
        while len(self._seen) > _KNOWN_DEVICE_MAX:
            self._seen.popitem(last=False)


def bearer_token() -> str:
    return parse_bearer(request.headers.get("Authorization", ""))


def parse_bearer(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` value; raises `Unauthorized` otherwise."""
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("send Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must use the Bearer scheme")
    return token.strip()


async def authenticate(ctx: ContentContext, cache: DeviceCache) -> Principal:
    try:
        claims = cache.verify(ctx.verifier, bearer_token())
    except TokenError as exc:
        raise Unauthorized(str(exc)) from exc
    key = (claims.user_id, claims.device_id)
    if not cache.fresh(key):
        if not await ctx.database.read(store.device_belongs_to, claims.user_id, claims.device_id):
            raise Unauthorized("the device of this token no longer exists")
        cache.remember(key)
    return Principal(user_id=claims.user_id, device_id=claims.device_id)
