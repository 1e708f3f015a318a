"""The Redis bus: many content replicas publish, many gateways subscribe, one Redis in between.

Publishing (content service) uses the trio-native `RespCommands` (one pipelined connection, hiredis,
no asyncio bridge; it replaced redis.asyncio behind the bridge, which cost 3× the CPU per send,
across two threads: `python -m bench.client_costs`): one EVALSHA per send, whatever the number of
recipients. The script stores each user's head only if it moves forward and PUBLISHes the frame to
each device channel, in one atomic step, and returns PUBLISH's receiver counts (how many gateways
hold each device). Heads expire after `head_ttl_s` of silence; a missing head is "unknown" and makes
the client pull once.

Subscribing (gateway) uses the trio-native `RespSubscriber` (bench/redis_subscriber.py measured it
against redis.asyncio's PubSub across the bridge): messages are parsed by hiredis in the trio thread
and handed to the hub synchronously, with no thread hop per message.

When the subscriber reconnects after losing Redis, every held device is resubscribed and the resync
handler (the gateway) sends each device a NEW frame with its head as Redis now knows it: the head it
had, or after a restart that emptied it the database's (read by the head loader where the process
has the database, and written back), or "unknown" if neither knows it. A client behind its head
pulls; nothing is missed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from pingpull.bus.base import Bus, BusError, Publication, Receiver, ReceiverRegistry, Subscription
from pingpull.bus.resp import RespSubscriber
from pingpull.bus.resp_commands import RespCommands, Script

if TYPE_CHECKING:
    from pingpull.bus.heads import HeadLoader

log = logging.getLogger("pingpull.bus")

# Keys and channels live under a prefix ("pp" by default), so several deployments (or test runs)
# can share one Redis: pub/sub channels are global, not per database.
HEAD_KEY = "{prefix}:head:{user}"
DEVICE_CHANNEL = "{prefix}:d:{device}"
PUSH_WAKE_CHANNEL = "{prefix}:push:wake"

# KEYS: one head key per publication. ARGV: ttl, then per publication: head, frame, n, n channels.
# Heads are compared as Lua numbers (doubles): exact up to 2**53 seqs per user, far beyond any inbox.
_PUBLISH_SCRIPT = Script("""
local ttl = tonumber(ARGV[1])
local i = 2
local out = {}
for k = 1, #KEYS do
  local head = tonumber(ARGV[i])
  local frame = ARGV[i + 1]
  local n = tonumber(ARGV[i + 2])
  i = i + 3
  local current = tonumber(redis.call('GET', KEYS[k]) or '-1')
  if head > current then
    redis.call('SET', KEYS[k], ARGV[i - 3], 'EX', ttl)
  else
    redis.call('EXPIRE', KEYS[k], ttl)
  end
  for d = 1, n do
    out[#out + 1] = redis.call('PUBLISH', ARGV[i], frame)
    i = i + 1
  end
end
return out
""")

# Remember heads read from the database (the fallback), forward only like a publish.
# KEYS: head keys. ARGV: ttl, then one head per key.
_REMEMBER_SCRIPT = Script("""
local ttl = tonumber(ARGV[1])
for k = 1, #KEYS do
  local head = tonumber(ARGV[k + 1])
  if head > tonumber(redis.call('GET', KEYS[k]) or '-1') then
    redis.call('SET', KEYS[k], ARGV[k + 1], 'EX', ttl)
  end
end
return #KEYS
""")


class RedisBus(Bus):
    """Open it with `open_redis_bus`, which runs the command connection's tasks."""

    def __init__(
        self,
        url: str,
        commands: RespCommands,
        *,
        prefix: str,
        head_ttl_s: int,
        head_loader: HeadLoader | None = None,
    ) -> None:
        super().__init__()
        self._commands = commands
        self._load = head_loader
        self._prefix = prefix
        self._head_ttl_s = head_ttl_s
        self._registry = ReceiverRegistry(
            on_first=lambda device_id: self.subscriber.subscribe(self._channel(device_id).encode()),
            on_last=lambda device_id: self.subscriber.unsubscribe(self._channel(device_id).encode()),
        )
        self._resync: Callable[[], None] | None = None
        self._channel_prefix = DEVICE_CHANNEL.format(prefix=prefix, device="").encode()
        self._wake_channel = PUSH_WAKE_CHANNEL.format(prefix=prefix).encode()
        self.subscriber = RespSubscriber(url, self._on_message, on_connected=self._on_connected)

    # --- publishing ------------------------------------------------------------------------------

    async def publish(self, publications: Sequence[Publication]) -> Mapping[int, int]:
        if not publications:
            return {}
        keys = [self._head_key(p.user_id) for p in publications]
        argv: list[Any] = [self._head_ttl_s]
        devices: list[int] = []
        for p in publications:
            argv += [p.head, p.frame, len(p.device_ids), *(self._channel(d) for d in p.device_ids)]
            devices += p.device_ids
        try:
            counts = await self._commands.evalsha(_PUBLISH_SCRIPT, keys, argv)
        except BusError as exc:
            raise BusError(f"publish failed: {exc}") from exc
        return dict(zip(devices, (int(c) for c in counts), strict=True))

    async def head(self, user_id: int) -> int | None:
        try:
            value = await self._commands.execute(b"GET", self._head_key(user_id))
        except BusError as exc:
            raise BusError(f"head lookup failed: {exc}") from exc
        if value is None and self._load is not None:
            return (await self._fill([user_id]))[user_id]
        return None if value is None else int(value)

    async def heads(self, user_ids: Sequence[int]) -> dict[int, int | None]:
        """Many heads in one round trip (MGET), for resyncing every held device after a reconnect."""
        if not user_ids:
            return {}
        try:
            values = await self._commands.execute(b"MGET", *(self._head_key(u) for u in user_ids))
        except BusError as exc:
            raise BusError(f"head lookup failed: {exc}") from exc
        heads = {u: None if v is None else int(v) for u, v in zip(user_ids, values, strict=True)}
        missing = [u for u, head in heads.items() if head is None]
        if missing and self._load is not None:
            heads.update(await self._fill(missing))
        return heads

    async def _fill(self, user_ids: Sequence[int]) -> dict[int, int | None]:
        """Heads Redis lost (a restart without persistence), from the database; written back forward
        only, so the next HELLO is answered by Redis and a concurrent publish is never undone."""
        assert self._load is not None
        loaded = await self._load(user_ids)
        if loaded:
            keys = [self._head_key(u) for u in loaded]
            try:
                await self._commands.evalsha(_REMEMBER_SCRIPT, keys, [self._head_ttl_s, *loaded.values()])
            except BusError as exc:
                log.warning("could not store heads read from the database: %s", exc)
        return {u: loaded.get(u) for u in user_ids}

    def _head_key(self, user_id: int) -> str:
        return HEAD_KEY.format(prefix=self._prefix, user=user_id)

    def _channel(self, device_id: int) -> str:
        return DEVICE_CHANNEL.format(prefix=self._prefix, device=device_id)

    # --- subscribing (gateway side) ----------------------------------------------------------------

    def subscribe(self, device_id: int, receiver: Receiver) -> Subscription:
        return self._registry.add(device_id, receiver)

    @property
    def frames_delivered(self) -> int:
        return self._registry.delivered

    def on_resync(self, handler: Callable[[], None]) -> None:
        """Called after the subscriber reconnected and resubscribed everything (not on first connect)."""
        self._resync = handler

    async def wake_push_workers(self) -> None:
        """One PUBLISH that every push worker subscribed to the wake channel hears."""
        await super().wake_push_workers()
        try:
            await self._commands.execute(b"PUBLISH", self._wake_channel, b"1")
        except BusError as exc:  # best effort: the workers' poll picks the jobs up anyway
            log.warning("push wake-up not published: %s", exc)

    def on_push_wake(self, handler: Callable[[], None]) -> None:
        """Listen on the wake channel (the subscriber must run in this process)."""
        if not self._wake_handlers:
            self.subscriber.subscribe(self._wake_channel)
        super().on_push_wake(handler)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        # The hot path of a gateway on Redis: one slice and one int() per message.
        try:
            if not channel.startswith(self._channel_prefix):
                if channel == self._wake_channel:
                    for handler in self._wake_handlers:
                        handler()
                    return
                raise ValueError
            device_id = int(channel[len(self._channel_prefix) :])
        except ValueError:
            log.warning("message on an unexpected channel %r", channel[:64])
            return
        self._registry.deliver(device_id, data)

    def _on_connected(self, first_time: bool) -> None:
        if not first_time and self._resync is not None:
            self._resync()


@asynccontextmanager
async def open_redis_bus(
    url: str,
    *,
    prefix: str = "pp",
    head_ttl_s: int = 30 * 24 * 3600,
    head_loader: HeadLoader | None = None,
) -> AsyncIterator[RedisBus]:
    commands = RespCommands(url, client_name=f"{prefix}-publisher")
    async with trio.open_nursery() as nursery:
        await nursery.start(commands.run)
        yield RedisBus(url, commands, prefix=prefix, head_ttl_s=head_ttl_s, head_loader=head_loader)
        nursery.cancel_scope.cancel()
