"""A minimal HTTP/3 client on aioquic (asyncio), for tests: GET a URL, return status, headers, body."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, cast
from urllib.parse import urlsplit

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent


class _H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.responses: dict[int, tuple[asyncio.Future[None], list[H3Event]]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            stream_id = getattr(h3_event, "stream_id", None)
            if stream_id in self.responses:
                done, events = self.responses[stream_id]
                events.append(h3_event)
                if getattr(h3_event, "stream_ended", False) and not done.done():
                    done.set_result(None)

    async def get(
        self, authority: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        stream_id = self._quic.get_next_available_stream_id()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        events: list[H3Event] = []
        self.responses[stream_id] = (done, events)
        request = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        request += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.h3.send_headers(stream_id=stream_id, headers=request, end_stream=True)
        self.transmit()
        await asyncio.wait_for(done, 10)
        status, response_headers, body = 0, {}, b""
        for event in events:
            if isinstance(event, HeadersReceived):
                for key, value in event.headers:
                    if key == b":status":
                        status = int(value)
                    else:
                        response_headers[key.decode()] = value.decode()
            elif isinstance(event, DataReceived):
                body += event.data
        return status, response_headers, body


async def _get(url: str, ca_file: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.load_verify_locations(ca_file)
    configuration.verify_mode = ssl.CERT_REQUIRED
    configuration.server_name = "localhost"
    host = "127.0.0.1" if parts.hostname in (None, "localhost") else parts.hostname
    async with connect(
        host, parts.port or 443, configuration=configuration, create_protocol=_H3Client
    ) as protocol:
        client = cast(_H3Client, protocol)
        return await client.get(
            parts.netloc, parts.path + (f"?{parts.query}" if parts.query else ""), headers
        )


def h3_get(
    url: str, ca_file: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Blocking: run from a thread (trio.to_thread.run_sync) or plain test code."""
    return asyncio.run(_get(url, ca_file, headers or {}))
