"""The in-process bus: the embedded default, where content service and gateway share one process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pingpull.bus.base import Bus, Publication, Receiver, ReceiverRegistry, Subscription


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._registry = ReceiverRegistry()
        self._heads: dict[int, int] = {}

    async def publish(self, publications: Sequence[Publication]) -> Mapping[int, int]:
        delivered: dict[int, int] = {}
        for publication in publications:
            if publication.head > self._heads.get(publication.user_id, -1):
                self._heads[publication.user_id] = publication.head
            for device_id in publication.device_ids:
                delivered[device_id] = self._registry.deliver(device_id, publication.frame)
        return delivered

    async def head(self, user_id: int) -> int | None:
        return self._heads.get(user_id)

    def subscribe(self, device_id: int, receiver: Receiver) -> Subscription:
        return self._registry.add(device_id, receiver)
