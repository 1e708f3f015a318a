"""Bearer-token authentication for content routes.

The signature check is local (public key); the "does this device still exist" check needs the
database, so positive answers are cached briefly. A token whose device is gone (a wiped database
behind a kept key) gets 401, never a 500 from a dangling foreign key.
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

_KNOWN_DEVICE_TTL_S = 60.0
_KNOWN_DEVICE_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    device_id: int


class DeviceCache:
    """(user, device) pairs recently confirmed to exist; bounded, time-limited."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[int, int], float] = OrderedDict()

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
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("send Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must use the Bearer scheme")
    return token.strip()


async def authenticate(ctx: ContentContext, cache: DeviceCache) -> Principal:
    try:
        claims = ctx.verifier.verify(bearer_token())
    except TokenError as exc:
        raise Unauthorized(str(exc)) from exc
    key = (claims.user_id, claims.device_id)
    if not cache.fresh(key):
        if not await ctx.database.read(store.device_belongs_to, claims.user_id, claims.device_id):
            raise Unauthorized("the device of this token no longer exists")
        cache.remember(key)
    return Principal(user_id=claims.user_id, device_id=claims.device_id)
