"""One HTTP/1.1 exchange over a raw socket, for tests that compare answers byte for byte on the wire."""

from __future__ import annotations

import h11
import trio

from tests.support.live import LiveContent

# The status, the header fields as sent (names as written, Date left out: it differs), the body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


async def raw_exchange(
    server: LiveContent, method: str, target: str, fields: list[tuple[str, str]], body: bytes = b""
) -> Answer:
    """One request on a fresh connection to `server`."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    client = h11.Connection(h11.CLIENT)
    async with stream:
        request = h11.Request(method=method, target=target, headers=[("Host", "t"), *fields])
        data = [h11.Data(data=body)] if body else []
        await stream.send_all(b"".join(client.send(e) or b"" for e in (request, *data, h11.EndOfMessage())))
        status, head, answer = 0, [], b""
        with trio.fail_after(10):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(1 << 20))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    head = [(k, v) for k, v in event.headers.raw_items() if k.lower() != b"date"]
                elif isinstance(event, h11.Data):
                    answer += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return status, head, answer
