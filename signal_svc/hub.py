"""Which connections hold which device, and the bus subscriptions that follow from it.

The hub subscribes to a device's bus channel when the device's first connection attaches and
cancels it when the last one goes, so a gateway only hears about devices it holds. A device may hold
a few connections at once (a phone switching from Wi-Fi to cellular opens the new one before the old
one times out); past `max_per_device` the oldest is closed, because the newest is the one a moving
phone is actually using.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

from pingpull.bus import Bus, Subscription
from signal_svc.delivery import Delivery
from signal_svc.link import Link


@dataclass(slots=True)
class _Device:
    subscription: Subscription | None = None
    links: list[Link] = field(default_factory=list)


class Hub:
    def __init__(self, bus: Bus, *, max_per_device: int, max_pending_bytes: int) -> None:
        self._bus = bus
        self._devices: dict[int, _Device] = {}
        self._max_per_device = max_per_device
        self._max_pending_bytes = max_pending_bytes
        self.frames_delivered = 0

    def __len__(self) -> int:
        return sum(len(d.links) for d in self._devices.values())

    @property
    def device_count(self) -> int:
        return len(self._devices)

    def links(self) -> Iterator[Link]:
        for device in list(self._devices.values()):
            yield from list(device.links)

    def attach(self, link: Link) -> None:
        device = self._devices.get(link.device_id)
        if device is None:
            device = self._devices[link.device_id] = _Device()
            device.subscription = self._bus.subscribe(
                link.device_id, functools.partial(self.receive, link.device_id)
            )
        device.links.append(link)
        while len(device.links) > self._max_per_device:
            oldest = device.links.pop(0)
            oldest.close_soon("replaced by a newer connection of the same device")

    def detach(self, link: Link) -> None:
        device = self._devices.get(link.device_id)
        if device is None:
            return
        if link in device.links:
            device.links.remove(link)
        if not device.links:
            del self._devices[link.device_id]
            if device.subscription is not None:
                device.subscription.cancel()

    def receive(self, device_id: int, frame: bytes) -> None:
        """The bus callback: write `frame` to every connection of the device, now, without awaiting."""
        device = self._devices.get(device_id)
        if device is None:
            return
        delivery = Delivery(frame)
        for link in tuple(device.links):
            link.deliver(delivery, self._max_pending_bytes)
        self.frames_delivered += len(device.links)

    def broadcast(self, frame: bytes) -> None:
        """Send one frame to every connection (after the bus lost state: everybody must pull)."""
        for device_id in list(self._devices):
            self.receive(device_id, frame)

    def resubscribe_all(self) -> None:
        """Subscribe every held device again (the bus reconnected after losing its subscriptions)."""
        for device_id, device in self._devices.items():
            if device.subscription is not None:
                device.subscription.cancel()
            device.subscription = self._bus.subscribe(device_id, functools.partial(self.receive, device_id))
