from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10, poll_s: float = 0.02) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the state lives in other objects; polling is the point
            await trio.sleep(poll_s)
