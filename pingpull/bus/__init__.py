"""The signal bus: memory (one process) and, with the gateway, Redis (many nodes)."""

from pingpull.bus.base import Bus, BusError, Publication, Receiver, Subscription
from pingpull.bus.memory import MemoryBus

__all__ = ["Bus", "BusError", "MemoryBus", "Publication", "Receiver", "Subscription"]
