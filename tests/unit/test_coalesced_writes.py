"""hypercorn's HTTP/1.1 answers leave in one write: the head waits for the first body bytes."""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio
from hypercorn.events import RawData

from content_svc import coalesced_writes
from content_svc.socket_writes import FileSpan


class FakeProtocol:
    """The two attributes of hypercorn's H11Protocol the method uses: the h11 connection, and `send`."""

    def __init__(self, request: bytes, *, whole: bool = True) -> None:
        self.connection = h11.Connection(h11.SERVER)
        self.connection.receive_data(request)
        event = self.connection.next_event()
        while whole and not isinstance(event, h11.EndOfMessage):
            event = self.connection.next_event()
        self.writes: list[bytes] = []

    async def send(self, event: Any) -> None:
        assert isinstance(event, RawData)
        self.writes.append(event.data)  # bytes, or a FileSpan for sendfile


def run(protocol: FakeProtocol, *events: Any) -> None:
    async def main() -> None:
        for event in events:
            await coalesced_writes._send_h11_event_coalesced(protocol, event)

    trio.run(main)


GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD = h11.Response(status_code=200, headers=[("Content-Length", "15"), ("Content-Type", "application/json")])


def test_a_json_answer_is_one_write_with_the_same_bytes() -> None:
    coalesced = FakeProtocol(GET)
    run(coalesced, HEAD, h11.Data(data=b'{"status":"ok"}'), h11.EndOfMessage())
    plain = FakeProtocol(GET).connection
    expected = b"".join(
        plain.send(e) or b"" for e in (HEAD, h11.Data(data=b'{"status":"ok"}'), h11.EndOfMessage())
    )
    assert coalesced.writes == [expected]


def test_a_streamed_answer_sends_the_head_with_its_first_chunk_then_each_chunk() -> None:
    protocol = FakeProtocol(GET)
    streamed = h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])
    run(protocol, streamed, h11.Data(data=b"one"), h11.Data(data=b"two"), h11.EndOfMessage())
    assert len(protocol.writes) == 3
    assert protocol.writes[0].startswith(b"HTTP/1.1 200 ") and protocol.writes[0].endswith(b"3\r\none\r\n")
    assert protocol.writes[1] == b"3\r\ntwo\r\n"
    assert protocol.writes[2] == b"0\r\n\r\n"


def test_a_large_body_is_not_copied_behind_its_head_but_written_as_it_is() -> None:
    body = bytes(range(256)) * (coalesced_writes._COPY_AT_MOST_BYTES // 256 + 1)
    protocol = FakeProtocol(GET)
    head = h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])
    run(protocol, head, h11.Data(data=body), h11.EndOfMessage())
    assert len(protocol.writes) == 2
    assert protocol.writes[0].startswith(b"HTTP/1.1 200 ") and protocol.writes[0].endswith(b"\r\n\r\n")
    assert protocol.writes[1] is body


def test_a_file_span_carries_the_held_head_and_is_not_joined_into_bytes() -> None:
    protocol = FakeProtocol(GET)
    head = h11.Response(status_code=206, headers=[("Content-Length", "1000")])
    run(protocol, head, h11.Data(data=FileSpan(fd=7, offset=10, count=1000)), h11.EndOfMessage())
    assert len(protocol.writes) == 1
    span = protocol.writes[0]
    assert isinstance(span, FileSpan) and (span.fd, span.offset, span.count) == (7, 10, 1000)
    assert span.head.startswith(b"HTTP/1.1 206 ") and span.head.endswith(b"\r\n\r\n")


def test_a_chunked_file_span_is_framed_around_it() -> None:
    protocol = FakeProtocol(GET)
    streamed = h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])
    run(protocol, streamed, h11.Data(data=FileSpan(fd=7, offset=0, count=300)), h11.EndOfMessage())
    span, after, end = protocol.writes
    assert isinstance(span, FileSpan) and span.head.endswith(b"\r\n\r\n12c\r\n")  # 300 = 0x12c
    assert (after, end) == (b"\r\n", b"0\r\n\r\n")


def test_a_file_span_longer_than_the_content_length_is_refused() -> None:
    protocol = FakeProtocol(GET)
    head = h11.Response(status_code=200, headers=[("Content-Length", "10")])
    with pytest.raises(h11.LocalProtocolError):
        run(protocol, head, h11.Data(data=FileSpan(fd=7, offset=0, count=11)))


def test_an_answer_without_a_body_goes_out_at_its_end() -> None:
    protocol = FakeProtocol(GET)
    run(protocol, h11.Response(status_code=204, headers=[]), h11.EndOfMessage())
    assert len(protocol.writes) == 1 and protocol.writes[0].startswith(b"HTTP/1.1 204 ")


def test_100_continue_is_written_at_once() -> None:
    """The client waits for it before it sends its body: holding it back would stall the upload."""
    expecting = b"POST /v1/media HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    protocol = FakeProtocol(expecting, whole=False)
    run(protocol, h11.InformationalResponse(status_code=100, headers=[]))
    assert protocol.writes == [b"HTTP/1.1 100 \r\n\r\n"]


def test_installed_by_the_content_app() -> None:
    from content_svc.app import create_app

    coalesced_writes.uninstall()
    assert not coalesced_writes.installed()
    with pytest.raises(Exception):  # noqa: B017 - create_app needs a context; install comes first
        create_app(None)  # type: ignore[arg-type]
    assert coalesced_writes.installed()
