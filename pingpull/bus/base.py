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
    @abc.abstractmethod
    async def publish(self, publications: Sequence[Publication]) -> Mapping[int, int]:
        """Store each user's head (never backwards) and deliver each frame to its devices.

        Returns receivers per device id."""

    @abc.abstractmethod
    async def head(self, user_id: int) -> int | None:
        """The last head published for the user, or None when the bus does not know it."""

    async def heads(self, user_ids: Sequence[int]) -> dict[int, int | None]:
        """Several heads at once; backends with a batch lookup override this."""
        return {user_id: await self.head(user_id) for user_id in user_ids}

    def on_resync(self, handler: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Register a callback for "the bus lost its subscriptions and has them back": every held
        device must be told to pull. The in-memory bus never loses them, so it never calls it."""

    @abc.abstractmethod
    def subscribe(self, device_id: int, receiver: Receiver) -> Subscription:
        """Call `receiver(frame)` for every frame published to `device_id` until cancelled."""
