"""`send_file_span` over a real socket pair: head first, the exact bytes, waits when the socket is full,
and refuses to pretend when the file ends early."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from content_svc.zero_copy import FileSpan, send_file_span, split_pieces

DATA = os.urandom(2 * 1024 * 1024 + 3)


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
                await send_file_span(sender, FileSpan(fd, 1, len(DATA) - 1, head=b"HEAD!"))
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
                await send_file_span(sender, FileSpan(fd, len(DATA) - 100, 1000))
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
            await send_file_span(sender, FileSpan(fd, 0, len(DATA)))
    finally:
        os.close(fd)
        sender.close()


def test_bytes_around_a_span_go_with_it_or_after_it() -> None:
    span = FileSpan(3, 0, 10)
    writes = split_pieces([b"a\r\n", span, b"\r\n", b"0\r\n\r\n"], b"HEAD")
    assert writes == [FileSpan(3, 0, 10, b"HEADa\r\n"), b"\r\n0\r\n\r\n"]
    assert split_pieces([span]) == [span]
