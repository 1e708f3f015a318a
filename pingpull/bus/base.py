"""The signal bus: how the content service tells gateways "device D has something new".

A publish carries one pre-encoded frame for one user's devices and stores the user's inbox head beside
it, so a gateway can answer HELLO with the current head without touching the database. Heads only move
forward: a late publish (a slow sender committing seq 7 after another published seq 8) never moves a
head backwards. `publish` returns, per device, how many receivers got the frame; zero means no gateway
holds that device, so its push job is due now instead of after the ack grace.

Receivers are plain callables invoked synchronously with the frame bytes. That keeps the gateway free
of per-connection queues: the hub looks up the device's connections and writes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pingpull.errors import PingpullError

Receiver = Callable[[bytes], None]


class BusError(PingpullError):
    """The bus could not deliver or store (its backend is unreachable)."""


@dataclass(frozen=True, slots=True)
class Publication:
    """One user's new head and the frame announcing it to that user's devices."""

    user_id: int
    head: int
    frame: bytes
    device_ids: Sequence[int]


class Subscription(abc.ABC):
    """A receiver's registration for one device; cancel it when the device's last connection goes."""

    @abc.abstractmethod
    def cancel(self) -> None: ...


class Bus(abc.ABC):
    def __init__(self) -> None:
        self._wake_handlers: list[Callable[[], None]] = []

    @abc.abstractmethod
    async def publish(self, publications: Sequence[Publication]) -> Mapping[int, int]:
        """Store each user's head (never backwards) and deliver each frame to its devices.

        Returns receivers per device id."""

    @abc.abstractmethod
    async def head(self, user_id: int) -> int | None:
        """The last head published for the user, or None when the bus does not know it."""

    @property
    def frames_delivered(self) -> int:
        """Frames handed to this process's receivers since start, one per receiver per frame."""
        return 0

    async def heads(self, user_ids: Sequence[int]) -> dict[int, int | None]:
        """Several heads at once; backends with a batch lookup override this."""
        return {user_id: await self.head(user_id) for user_id in user_ids}

    def on_resync(self, handler: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Register a callback for "the bus lost its subscriptions and has them back": every held
        device must be told to pull. The in-memory bus never loses them, so it never calls it."""

    @abc.abstractmethod
    def subscribe(self, device_id: int, receiver: Receiver) -> Subscription:
        """Call `receiver(frame)` for every frame published to `device_id` until cancelled."""

    async def wake_push_workers(self) -> None:
        """Tell push workers in every process that jobs became due now (best effort: a lost wake-up
        costs one poll interval). Registered handlers of this process are called too."""
        for handler in self._wake_handlers:
            handler()

    def on_push_wake(self, handler: Callable[[], None]) -> None:
        """Call `handler` whenever any process calls `wake_push_workers` (a push worker's wake)."""
        self._wake_handlers.append(handler)


class ReceiverRegistry:
    """Receivers per device, shared by the bus implementations.

    `on_first(device_id)` / `on_last(device_id)` fire when a device gains its first receiver or loses
    its last one (the Redis bus subscribes and unsubscribes the device's channel there).

    Nearly every device has exactly one receiver (the gateway's connection for it), so those live in
    their own map and cost one dict lookup and one call per frame; devices with several are in
    another map, looked up only on a miss."""

    def __init__(
        self,
        on_first: Callable[[int], None] | None = None,
        on_last: Callable[[int], None] | None = None,
    ) -> None:
        self._one: dict[int, Receiver] = {}
        self._many: dict[int, list[Receiver]] = {}
        self._on_first = on_first
        self._on_last = on_last
        # Frames handed to receivers since start (one per receiver per frame).
        self.delivered = 0

    def __contains__(self, device_id: int) -> bool:
        return device_id in self._one or device_id in self._many

    def add(self, device_id: int, receiver: Receiver) -> Subscription:
        many = self._many.get(device_id)
        if many is not None:
            many.append(receiver)
        elif (one := self._one.pop(device_id, None)) is not None:
            self._many[device_id] = [one, receiver]
        else:
            self._one[device_id] = receiver
            if self._on_first is not None:
                self._on_first(device_id)
        return _Registered(self, device_id, receiver)

    def remove(self, device_id: int, receiver: Receiver) -> None:
        many = self._many.get(device_id)
        if many is not None:
            many.remove(receiver)
            if len(many) == 1:
                del self._many[device_id]
                self._one[device_id] = many[0]
            return
        if device_id in self._one and self._one[device_id] == receiver:
            del self._one[device_id]
            if self._on_last is not None:
                self._on_last(device_id)

    def deliver(self, device_id: int, frame: bytes) -> int:
        """Call every receiver of the device; returns how many."""
        one = self._one.get(device_id)
        if one is not None:
            one(frame)
            self.delivered += 1
            return 1
        return self._deliver_many(device_id, frame)

    def _deliver_many(self, device_id: int, frame: bytes) -> int:
        many = self._many.get(device_id)
        if many is None:
            return 0
        copy = tuple(many)  # a copy: a receiver may cancel itself (or another) while we loop
        for receiver in copy:
            receiver(frame)
        self.delivered += len(copy)
        return len(copy)

    def deliver_all(self, publications: Sequence[Publication]) -> dict[int, int]:
        """Deliver a batch of publications in one pass; receivers per device id.

        The in-process bus's hot loop, one iteration per device and frame: a device with one
        receiver costs a dict lookup, the receiver's call and a dict store; the count is added once."""
        delivered: dict[int, int] = {}
        lookup = self._one.get
        count = 0
        for publication in publications:
            frame = publication.frame
            for device_id in publication.device_ids:
                one = lookup(device_id)
                if one is not None:
                    one(frame)
                    delivered[device_id] = 1
                    count += 1
                else:
                    delivered[device_id] = self._deliver_many(device_id, frame)
        self.delivered += count
        return delivered


class _Registered(Subscription):
    __slots__ = ("_device_id", "_receiver", "_registry")

    def __init__(self, registry: ReceiverRegistry, device_id: int, receiver: Receiver) -> None:
        self._registry = registry
        self._device_id = device_id
        self._receiver: Receiver | None = receiver

    def cancel(self) -> None:
        if self._receiver is not None:
            self._registry.remove(self._device_id, self._receiver)
            self._receiver = None
