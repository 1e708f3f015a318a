"""The gateway's fan-out path on real (Unix) socket pairs: bus -> link receiver -> non-blocking send.

What is checked: each connection gets exactly the 22 bytes per frame, in order; a connection whose
peer stops reading has its frames queued (never a blocked callback, never a lost or reordered frame)
while the others keep receiving; past `max_pending_bytes` it is dropped as a slow consumer; a queue
held during HELLO is not bypassed by the fast path; the bus's receiver registry keeps its counts
and its first/last hooks right as devices gain and lose connections.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from pingpull import wire
from pingpull.bus import MemoryBus, Publication
from pingpull.bus.base import ReceiverRegistry
from signal_svc.delivery import WS_BINARY_20
from signal_svc.hub import Hub
from signal_svc.link import Link
from signal_svc.sse import SseLink
from signal_svc.ws import WsLink

_SMALL_BUFFER = 4096


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for server, client in made:
        server.close()
        client.close()


def _pair(made: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SMALL_BUFFER)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SMALL_BUFFER)
    server.setblocking(False)
    client.setblocking(False)
    made.append((server, client))
    return server, client


def _ws_link(server: socket.socket, user_id: int, device_id: int) -> WsLink:
    return WsLink(server, user_id, device_id, None)  # type: ignore[arg-type]  # no client frames here


def _read_all(client: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = client.recv(65536)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def _heads(data: bytes) -> list[int]:
    """Decode a run of 22-byte WebSocket frames; every one must be a well-formed NEW."""
    assert len(data) % 22 == 0, len(data)
    heads = []
    for i in range(0, len(data), 22):
        assert data[i : i + 2] == WS_BINARY_20
        frame = wire.decode(data[i + 2 : i + 22])
        assert frame.kind == wire.Kind.NEW
        heads.append(frame.head)
    return heads


def _publication(user_id: int, head: int, *device_ids: int) -> Publication:
    return Publication(user_id, head, wire.encode_new(head, 1000 + head), device_ids)


async def test_one_frame_reaches_every_connection_once(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    bus = MemoryBus()
    hub = Hub(bus, max_per_device=3, max_pending_bytes=16 * 1024)
    solo_server, solo_client = _pair(pairs)
    hub.attach(_ws_link(solo_server, 1, 10))
    sse_server, sse_client = _pair(pairs)
    hub.attach(SseLink(sse_server, 2, 20))
    twins = [_pair(pairs) for _ in range(2)]
    for server, _ in twins:
        hub.attach(_ws_link(server, 2, 21))

    delivered = await bus.publish([_publication(1, 5, 10), _publication(2, 7, 20, 21, 99)])

    assert delivered == {10: 1, 20: 1, 21: 2, 99: 0}
    assert hub.frames_delivered == 4
    assert _heads(_read_all(solo_client)) == [5]
    for _, client in twins:
        assert _heads(_read_all(client)) == [7]
    sse = _read_all(sse_client)
    assert b"event: new" in sse
    assert b'"head":7' in sse


async def test_a_reader_that_stops_is_queued_then_dropped_while_others_flow(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    max_pending = 2048
    bus = MemoryBus()
    hub = Hub(bus, max_per_device=3, max_pending_bytes=max_pending)
    stuck_server, stuck_client = _pair(pairs)
    stuck = _ws_link(stuck_server, 1, 1)
    hub.attach(stuck)
    healthy_server, healthy_client = _pair(pairs)
    hub.attach(_ws_link(healthy_server, 2, 2))
    woken = trio.CancelScope()
    stuck.waker = woken  # as if its task were parked in Link.wait

    received: list[int] = []
    head = 0
    while stuck.closing is None:
        head += 1
        await bus.publish([_publication(1, head, 1), _publication(2, head, 2)])
        received += _heads(_read_all(healthy_client))  # the healthy client keeps reading
        assert head < 20_000, "the stuck connection was never declared a slow consumer"
        if stuck.pending is not None:
            assert woken.cancel_called  # its task is woken to flush on writability
            assert len(stuck.pending) <= max_pending

    assert stuck.closing == "slow consumer"
    assert received == list(range(1, head + 1))  # every frame, in order, to the one still reading
    # What the stuck one got before its queue overflowed is a gap-free prefix, never garbage.
    got = _heads(_read_all(stuck_client))
    assert got == list(range(1, len(got) + 1))
    assert 0 < len(got) < head
    # A closing connection takes nothing more.
    before = stuck.pending
    await bus.publish([_publication(1, head + 1, 1)])
    assert stuck.pending == before


async def test_a_queued_connection_is_flushed_in_order_by_its_task(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    bus = MemoryBus()
    hub = Hub(bus, max_per_device=3, max_pending_bytes=1024 * 1024)
    server, client = _pair(pairs)
    link = _ws_link(server, 1, 1)
    hub.attach(link)
    head = 0
    while link.pending is None:  # fill the kernel's buffers until it refuses
        head += 1
        await bus.publish([_publication(1, head, 1)])
    for _ in range(50):  # these go behind the queue, never around it
        head += 1
        await bus.publish([_publication(1, head, 1)])
    assert link.pending is not None

    got = b""
    with trio.fail_after(5):
        while link.pending is not None or len(got) < head * 22:
            if link.pending is not None:
                assert await link.wait(trio.current_time() + 1) is None  # flushes, reads nothing
            got += _read_all(client)
            await trio.sleep(0.001)  # a checkpoint, so a lost frame fails here instead of spinning
    assert _heads(got) == list(range(1, head + 1))
    # Flushed: the fast path is back.
    await bus.publish([_publication(1, head + 1, 1)])
    assert link.pending is None
    assert _heads(_read_all(client)) == [head + 1]


async def test_frames_arriving_while_the_queue_is_held_wait_behind_it(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """The HELLO race: a link attaches with its queue held; publications then must not overtake."""
    bus = MemoryBus()
    hub = Hub(bus, max_per_device=3, max_pending_bytes=16 * 1024)
    server, client = _pair(pairs)
    link = _ws_link(server, 1, 1)
    link.pending = bytearray()
    hub.attach(link)
    await bus.publish([_publication(1, 1, 1), _publication(1, 2, 1)])
    assert _read_all(client) == b""
    assert link.pending is not None
    assert _heads(bytes(link.pending)) == [1, 2]


async def test_the_oldest_connection_beyond_the_limit_stops_receiving(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    bus = MemoryBus()
    hub = Hub(bus, max_per_device=2, max_pending_bytes=16 * 1024)
    links: list[Link] = []
    clients = []
    for _ in range(3):
        server, client = _pair(pairs)
        links.append(_ws_link(server, 1, 1))
        hub.attach(links[-1])
        clients.append(client)
    assert links[0].closing is not None
    assert len(hub) == 2
    assert await bus.publish([_publication(1, 1, 1)]) == {1: 2}
    assert [len(_read_all(c)) for c in clients] == [0, 22, 22]
    for link in links:
        hub.detach(link)
    assert len(hub) == 0
    assert hub.device_count == 0
    assert await bus.publish([_publication(1, 2, 1)]) == {1: 0}


def test_registry_moves_devices_between_one_and_many_receivers() -> None:
    events: list[tuple[str, int]] = []
    registry = ReceiverRegistry(
        on_first=lambda d: events.append(("first", d)), on_last=lambda d: events.append(("last", d))
    )
    got: list[tuple[str, bytes]] = []
    a = registry.add(7, lambda frame: got.append(("a", frame)))
    b = registry.add(7, lambda frame: got.append(("b", frame)))
    c = registry.add(7, lambda frame: got.append(("c", frame)))
    assert registry.deliver(7, b"1") == 3
    b.cancel()
    b.cancel()  # idempotent
    assert registry.deliver(7, b"2") == 2
    a.cancel()
    assert registry.deliver_all([Publication(1, 1, b"3", (7, 8))]) == {7: 1, 8: 0}
    c.cancel()
    assert registry.deliver(7, b"4") == 0
    assert 7 not in registry
    assert events == [("first", 7), ("last", 7)]
    assert got == [("a", b"1"), ("b", b"1"), ("c", b"1"), ("a", b"2"), ("c", b"2"), ("c", b"3")]
    assert registry.delivered == 6


def test_a_receiver_may_cancel_another_during_delivery() -> None:
    registry = ReceiverRegistry()
    got: list[str] = []
    subscriptions = {}

    def first(frame: bytes) -> None:
        got.append("first")
        subscriptions["second"].cancel()

    subscriptions["first"] = registry.add(1, first)
    subscriptions["second"] = registry.add(1, lambda frame: got.append("second"))
    assert registry.deliver(1, b"x") == 2  # the delivery in progress still reaches both
    assert registry.deliver(1, b"y") == 1
    assert got == ["first", "second", "first"]
