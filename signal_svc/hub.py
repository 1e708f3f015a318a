"""Which connections hold which device, and their bus subscriptions.

Every connection subscribes itself: its link's `push` is its own receiver on the bus, so a frame
goes from the bus's lookup straight to the one object that owns the socket (for WebSocket, one
concatenation and one non-blocking send), and the bus subscribes a device's channel while it has
any connection at all. A device may hold a few connections at once (a phone switching from Wi-Fi to
cellular opens the new one before the old one times out); past `max_per_device` the oldest is
closed, because the newest is the one a moving phone is actually using.
"""

from __future__ import annotations

from collections.abc import Iterator

from pingpull.bus import Bus
from signal_svc.link import Link


class Hub:
    def __init__(self, bus: Bus, *, max_per_device: int, max_pending_bytes: int) -> None:
        self._bus = bus
        self._devices: dict[int, list[Link]] = {}
        self._max_per_device = max_per_device
        self.max_pending_bytes = max_pending_bytes
        self._resync_frames = 0

    def __len__(self) -> int:
        return sum(len(links) for links in self._devices.values())

    @property
    def device_count(self) -> int:
        return len(self._devices)

    @property
    def frames_delivered(self) -> int:
        """Frames handed to connections since start (the bus counts its own, once per batch)."""
        return self._bus.frames_delivered + self._resync_frames

    def links(self) -> Iterator[Link]:
        for links in list(self._devices.values()):
            yield from list(links)

    def attach(self, link: Link) -> None:
        links = self._devices.get(link.device_id)
        if links is None:
            links = self._devices[link.device_id] = []
        links.append(link)
        link.max_pending_bytes = self.max_pending_bytes
        link.subscription = self._bus.subscribe(link.device_id, link.push)
        while len(links) > self._max_per_device:
            oldest = links.pop(0)
            oldest.close_soon("replaced by a newer connection of the same device")
            oldest.unsubscribe()

    def detach(self, link: Link) -> None:
        link.unsubscribe()
        links = self._devices.get(link.device_id)
        if links is None:
            return
        if link in links:
            links.remove(link)
        if not links:
            del self._devices[link.device_id]

    def receive(self, device_id: int, frame: bytes) -> None:
        """Write `frame` to every connection of the device held here (resync; the bus calls each
        connection's `push` directly)."""
        for link in tuple(self._devices.get(device_id, ())):
            link.push(frame)
            self._resync_frames += 1
