"""The in-process bus: the embedded default, where content service and gateway share one process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pingpull.bus.base import Bus, Publication, Receiver, Subscription


class _MemorySubscription(Subscription):
    __slots__ = ("_bus", "_device_id", "_receiver")

    def __init__(self, bus: MemoryBus, device_id: int, receiver: Receiver) -> None:
        self._bus = bus
        self._device_id = device_id
        self._receiver: Receiver | None = receiver

    def cancel(self) -> None:
        if self._receiver is not None:
            self._bus._remove(self._device_id, self._receiver)
            self._receiver = None


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._receivers: dict[int, list[Receiver]] = {}
        self._heads: dict[int, int] = {}

    async def publish(self, publications: Sequence[Publication]) -> Mapping[int, int]:
        delivered: dict[int, int] = {}
        for publication in publications:
            if publication.head > self._heads.get(publication.user_id, -1):
                self._heads[publication.user_id] = publication.head
            for device_id in publication.device_ids:
                receivers = self._receivers.get(device_id, ())
                # Copy: a receiver may cancel its subscription while being called.
                for receiver in tuple(receivers):
                    receiver(publication.frame)
                delivered[device_id] = len(receivers)
        return delivered

    async def head(self, user_id: int) -> int | None:
        return self._heads.get(user_id)

    def subscribe(self, device_id: int, receiver: Receiver) -> Subscription:
        self._receivers.setdefault(device_id, []).append(receiver)
        return _MemorySubscription(self, device_id, receiver)

    def _remove(self, device_id: int, receiver: Receiver) -> None:
        receivers = self._receivers.get(device_id)
        if receivers is None:
            return
        receivers.remove(receiver)
        if not receivers:
            del self._receivers[device_id]
