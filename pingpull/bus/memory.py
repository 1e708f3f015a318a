"""The in-process bus: the embedded default, where content service and gateway share one process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pingpull.bus.base import Bus, Publication, Receiver, ReceiverRegistry, Subscription


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._registry = ReceiverRegistry()
        self._heads: dict[int, int] = {}

    async def publish(self, publications: Sequence[Publication]) -> Mapping[int, int]:
        heads = self._heads
        for publication in publications:
            if publication.head > heads.get(publication.user_id, -1):
                heads[publication.user_id] = publication.head
        # Heads first, then frames: nothing can observe the difference (no await in between).
        return self._registry.deliver_all(publications)

    async def head(self, user_id: int) -> int | None:
        return self._heads.get(user_id)

    def subscribe(self, device_id: int, receiver: Receiver) -> Subscription:
        return self._registry.add(device_id, receiver)

    @property
    def frames_delivered(self) -> int:
        return self._registry.delivered
