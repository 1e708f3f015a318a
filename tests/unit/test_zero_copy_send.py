"""`socket_writes` over a real socket pair: head first, the exact bytes, waits when the socket is full,
refuses to pretend when the file ends early, and gives up on a peer that stops reading."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from content_svc.coalesced_writes import split_pieces
from content_svc.socket_writes import FileSpan, WriteStalled, send_bytes, send_file_span

DATA = os.urandom(2 * 1024 * 1024 + 3)
STALL_S = 10.0


def a_file(tmp_path: Path) -> int:
    path = tmp_path / "object"
    path.write_bytes(DATA)
    return os.open(path, os.O_RDONLY)


async def read_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await sock.recv(min(65536, size - len(got)))
        if not chunk:
            break
        got += chunk
    return bytes(got)


async def test_the_head_then_the_span_arrive_even_through_a_full_socket(tmp_path: Path) -> None:
    fd = a_file(tmp_path)
    sender, receiver = trio.socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # full long before 2 MiB
    received = b""
    try:
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                nonlocal received
                await trio.sleep(0.05)  # the sender meets a full socket and must wait
                received = await read_exactly(receiver, 5 + len(DATA) - 1)

            nursery.start_soon(receive)
            with trio.fail_after(10):
                await send_file_span(sender, FileSpan(fd, 1, len(DATA) - 1, head=b"HEAD!"), STALL_S)
    finally:
        os.close(fd)
        sender.close()
        receiver.close()
    assert received == b"HEAD!" + DATA[1:]


async def test_a_file_that_ends_early_is_an_error_not_a_short_answer(tmp_path: Path) -> None:
    fd = a_file(tmp_path)
    sender, receiver = trio.socket.socketpair()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_exactly, receiver, 100)
            with pytest.raises(trio.BrokenResourceError, match="ended 900 bytes before"):
                await send_file_span(sender, FileSpan(fd, len(DATA) - 100, 1000), STALL_S)
            nursery.cancel_scope.cancel()
    finally:
        os.close(fd)
        sender.close()
        receiver.close()


async def test_a_closed_peer_is_a_broken_resource(tmp_path: Path) -> None:
    fd = a_file(tmp_path)
    sender, receiver = trio.socket.socketpair()
    receiver.close()
    try:
        with pytest.raises(trio.BrokenResourceError):
            await send_file_span(sender, FileSpan(fd, 0, len(DATA)), STALL_S)
    finally:
        os.close(fd)
        sender.close()


async def test_bytes_wait_for_a_slow_reader_and_arrive_whole() -> None:
    sender, receiver = trio.socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    received = b""
    try:
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                nonlocal received
                await trio.sleep(0.05)
                received = await read_exactly(receiver, len(DATA))

            nursery.start_soon(receive)
            with trio.fail_after(10):
                await send_bytes(sender, DATA, STALL_S)
    finally:
        sender.close()
        receiver.close()
    assert received == DATA


@pytest.mark.parametrize("what", ["bytes", "file span"])
async def test_a_peer_that_reads_nothing_is_given_up_after_the_stall_timeout(
    tmp_path: Path, what: str
) -> None:
    fd = a_file(tmp_path)
    sender, receiver = trio.socket.socketpair()  # nobody reads the receiver
    try:
        started = trio.current_time()
        stalling = (
            send_bytes(sender, DATA, 0.2)
            if what == "bytes"
            else send_file_span(sender, FileSpan(fd, 0, len(DATA)), 0.2)
        )
        with trio.fail_after(5), pytest.raises(WriteStalled):
            await stalling
        assert trio.current_time() - started >= 0.2
    finally:
        os.close(fd)
        sender.close()
        receiver.close()


def test_bytes_around_a_span_go_with_it_or_after_it() -> None:
    span = FileSpan(3, 0, 10)
    writes = split_pieces([b"a\r\n", span, b"\r\n", b"0\r\n\r\n"], b"HEAD")
    assert writes == [FileSpan(3, 0, 10, b"HEADa\r\n"), b"\r\n0\r\n\r\n"]
    assert split_pieces([span]) == [span]
