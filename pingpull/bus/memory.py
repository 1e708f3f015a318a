"""The in-process bus: the embedded default, where content service and gateway share one process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pingpull.bus.base import Bus, Publication, Receiver, ReceiverRegistry, Subscription

if TYPE_CHECKING:
    from pingpull.bus.heads import HeadLoader


class MemoryBus(Bus):
    """Heads live in a dict that starts empty; `head_loader` (the database, in one process) fills in
    the ones not published since start, so HELLO after a restart carries the real head."""

    def __init__(self, *, head_loader: HeadLoader | None = None) -> None:
        super().__init__()
        self._registry = ReceiverRegistry()
        self._heads: dict[int, int] = {}
        self._load = head_loader

    async def publish(self, publications: Sequence[Publication]) -> Mapping[int, int]:
        heads = self._heads
        for publication in publications:
            if publication.head > heads.get(publication.user_id, -1):
                heads[publication.user_id] = publication.head
        # Heads first, then frames: nothing can observe the difference (no await in between).
        return self._registry.deliver_all(publications)

    async def head(self, user_id: int) -> int | None:
        head = self._heads.get(user_id)
        if head is None and self._load is not None:
            return (await self.heads([user_id]))[user_id]
        return head

    async def heads(self, user_ids: Sequence[int]) -> dict[int, int | None]:
        known = self._heads
        missing = [user_id for user_id in user_ids if user_id not in known]
        if missing and self._load is not None:
            # A publish may land while we wait: remember forward only, never over a newer head.
            for user_id, head in (await self._load(missing)).items():
                if head > known.get(user_id, -1):
                    known[user_id] = head
        return {user_id: known.get(user_id) for user_id in user_ids}

    def subscribe(self, device_id: int, receiver: Receiver) -> Subscription:
        return self._registry.add(device_id, receiver)

    @property
    def frames_delivered(self) -> int:
        return self._registry.delivered
