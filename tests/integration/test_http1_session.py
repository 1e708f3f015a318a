"""The SDK's `Http1Session`: the content API through it answers exactly as through httpx, over one
connection; against a scripted HTTP/1.1 server on loopback it replaces connections the server closed,
sends a request twice only when that is safe, and turns every failure into `TransportError` while
staying usable.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trustme

from pingpull.client.content import ContentClient
from pingpull.client.errors import ApiError, TransportError
from pingpull.client.http1 import Http1Session
from tests.support.live import LiveContent

# --- the real content service ------------------------------------------------------------------------


async def test_the_content_api_answers_through_the_session_as_through_httpx(live: LiveContent) -> None:
    alice_httpx, alice = await live.account("alice")
    _, bob = await live.account("bob")
    async with Http1Session(live.base_url) as http:
        alice_h1 = ContentClient(http, alice["token"])
        bob_h1 = ContentClient(http, bob["token"])
        conversation = await alice_h1.create_conversation([bob["user_id"]])
        first = await alice_h1.send(conversation["id"], "one", idempotency_key="k-1")
        again = await alice_h1.send(conversation["id"], "one", idempotency_key="k-1")
        assert again == first  # the retry of a send is answered with the original
        await alice_httpx.send(conversation["id"], "two", idempotency_key="k-2")
        page = await bob_h1.pull(0)
        assert [item["message"]["body"] for item in page["items"]] == ["one", "two"]
        assert page == await live.client(bob["token"]).pull(0)
        await bob_h1.ack(page["head"])
        assert (await bob_h1.pull(page["head"]))["items"] == []
        with pytest.raises(ApiError) as refused:
            await ContentClient(http, "not-a-token").pull(0)
        assert refused.value.status == 401 and refused.value.slug == "unauthorized"
        with pytest.raises(ApiError) as unprocessable:
            await alice_h1.send(conversation["id"], "")
        assert unprocessable.value.status == 422


# --- a scripted server -------------------------------------------------------------------------------

Script = Callable[[int, h11.Request, bytes], list[bytes] | None]


@dataclass
class Scripted:
    """Counts connections and requests; `script(connection number, request, body)` gives the raw
    writes of the answer (None: close the connection without answering)."""

    script: Script
    url: str = ""
    connections: int = 0
    close_when_idle: bool = False
    requests: list[tuple[int, str, str]] = field(default_factory=list)

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request, body = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert request is not None
                self.requests.append((number, request.method.decode(), request.target.decode()))
                writes = self.script(number, request, body)
                if writes is None:
                    return
                for write in writes:
                    await stream.send_all(write)
                if self.close_when_idle or any(b"connection: close" in w.lower() for w in writes):
                    return
                conn = h11.Connection(h11.SERVER)  # the raw writes bypassed h11's bookkeeping


def ok(body: bytes = b'{"ok":true}', *extra: bytes) -> list[bytes]:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return [head + b"".join(extra) + b"\r\n" + body]


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def scripted(nursery: trio.Nursery, script: Script) -> Scripted:
    server = Scripted(script)
    listeners = await nursery.start(functools.partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
    server.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    return server


async def test_requests_share_one_connection(nursery: trio.Nursery) -> None:
    server = await scripted(nursery, lambda n, r, b: ok())
    # A TLS context is for https:// URLs; given with an http:// one, the connection stays plain.
    async with Http1Session(server.url, ssl_context=ssl.create_default_context()) as http:
        for _ in range(5):
            assert (await http.request("GET", "/x")).json() == {"ok": True}
    assert server.connections == 1 and len(server.requests) == 5


async def test_a_connection_the_server_closed_while_idle_is_replaced(nursery: trio.Nursery) -> None:
    server = await scripted(nursery, lambda n, r, b: ok())
    server.close_when_idle = True  # a keep-alive timeout of zero: every answer is the last
    async with Http1Session(server.url) as http:
        await http.request("GET", "/first")
        await trio.sleep(0.1)
        # Not replayable, so this only works because the closed connection is noticed before writing.
        await http.request("POST", "/v1/inbox/ack", json={"seq": 1})
    assert server.connections == 2 and len(server.requests) == 2


async def test_a_connection_close_answer_is_followed_by_a_new_connection(nursery: trio.Nursery) -> None:
    server = await scripted(nursery, lambda n, r, b: ok(b"{}", b"connection: close\r\n"))
    async with Http1Session(server.url) as http:
        for _ in range(3):
            await http.request("POST", "/ack", json={"seq": 1})  # not replayable: never needed a retry
    assert server.connections == 3 and len(server.requests) == 3


async def test_a_replayable_request_is_resent_once_on_a_new_connection(nursery: trio.Nursery) -> None:
    # The second request on the first connection finds it closed without an answer (the race with
    # a keep-alive timeout); GET and a POST with an Idempotency-Key are sent again, once.
    def script(n: int, request: h11.Request, body: bytes) -> list[bytes] | None:
        return None if n == 1 and len(server.requests) > 1 else ok()

    server = await scripted(nursery, script)
    async with Http1Session(server.url) as http:
        await http.request("GET", "/first")
        await http.request("GET", "/again")
        assert server.connections == 2
        assert [r[1:] for r in server.requests] == [("GET", "/first"), ("GET", "/again"), ("GET", "/again")]


async def test_a_post_without_idempotency_key_is_not_sent_twice(nursery: trio.Nursery) -> None:
    def script(n: int, request: h11.Request, body: bytes) -> list[bytes] | None:
        return None if len(server.requests) == 2 else ok()

    server = await scripted(nursery, script)
    async with Http1Session(server.url) as http:
        await http.request("GET", "/first")
        with pytest.raises(TransportError):
            await http.request("POST", "/v1/inbox/ack", json={"seq": 3})
        assert [r[1] for r in server.requests] == ["GET", "POST"]
        await http.request("GET", "/after")  # the session goes on, on a new connection
        key = {"Idempotency-Key": "k-9"}
        await http.request("POST", "/with-key", json={}, headers=key)
    assert server.connections == 2


async def test_a_keyed_post_is_resent_after_an_unanswered_reuse(nursery: trio.Nursery) -> None:
    def script(n: int, request: h11.Request, body: bytes) -> list[bytes] | None:
        return None if n == 1 and len(server.requests) == 2 else ok()

    server = await scripted(nursery, script)
    async with Http1Session(server.url) as http:
        await http.request("GET", "/first")
        await http.request("POST", "/send", json={"body": "x"}, headers={"Idempotency-Key": "k-1"})
    assert [r[1:] for r in server.requests][1:] == [("POST", "/send"), ("POST", "/send")]


async def test_an_answer_cut_in_the_middle_is_an_error_not_a_short_body(nursery: trio.Nursery) -> None:
    def script(n: int, request: h11.Request, body: bytes) -> list[bytes] | None:
        if request.target == b"/cut":
            return [b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{"par']
        return ok()

    server = await scripted(nursery, script)
    async with Http1Session(server.url, timeout_s=2) as http:
        with pytest.raises(TransportError):
            await http.request("GET", "/cut")
        assert (await http.request("GET", "/fine")).json() == {"ok": True}


async def test_a_server_that_never_answers_times_out_and_the_session_recovers(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def silent_then_fine(stream: trio.SocketStream) -> None:
        if not release.is_set():
            await release.wait()  # holds the first connection without a byte
            return
        await server.serve(stream)

    server = Scripted(lambda n, r, b: ok())
    listeners = await nursery.start(functools.partial(trio.serve_tcp, silent_then_fine, 0, host="127.0.0.1"))
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with Http1Session(url, timeout_s=0.3) as http:
        with pytest.raises(TransportError, match="no answer within"):
            await http.request("GET", "/slow")
        release.set()
        assert (await http.request("GET", "/again")).status_code == 200


async def test_refused_and_foreign_origins_are_transport_errors() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with Http1Session(f"http://127.0.0.1:{port}") as http:
            with pytest.raises(TransportError):
                await http.request("GET", "/")
            with pytest.raises(TransportError, match="only"):
                await http.request("GET", "http://example.invalid/x")


async def test_chunked_answers_repeated_fields_and_case_insensitive_names(nursery: trio.Nursery) -> None:
    chunked = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVary: a\r\nvary: b\r\n\r\n",
        b"3\r\n[1,\r\n",
        b"2\r\n2]\r\n0\r\n\r\n",
    ]
    server = await scripted(nursery, lambda n, r, b: chunked)
    async with Http1Session(server.url) as http:
        response = await http.request("GET", "/list", params={"after": 5, "limit": 2})
        assert response.json() == [1, 2]
        assert response.headers["VARY"] == "a, b" and "transfer-encoding" in response.headers
        assert server.requests[-1][2] == "/list?after=5&limit=2"
        await http.request("GET", "/list")
    assert server.connections == 1


async def test_https_with_the_given_context(nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = Scripted(lambda n, r, b: ok())
    listeners = await nursery.start(
        functools.partial(trio.serve_ssl_over_tcp, server.serve, 0, server_context, host="127.0.0.1")
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    async with Http1Session(f"https://localhost:{port}", ssl_context=client_context) as http:
        assert (await http.request("GET", "/a")).json() == {"ok": True}
        assert (await http.request("GET", "/b")).json() == {"ok": True}
    assert server.connections == 1
    async with Http1Session(f"https://localhost:{port}") as http:  # the system's CAs: not trusted
        with pytest.raises(TransportError):
            await http.request("GET", "/a")
