"""The inbox fast lane answers `GET /v1/inbox` exactly as the Quart route does, byte for byte on the
wire, and leaves every request it cannot decide from memory to the route.

Each case is sent twice over a raw socket on a fresh connection, with a token this process has not
verified yet (the route answers and verifies it), then again (the lane answers). The answers must be the same
bytes apart from the Date header. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import h11
import pytest
import trio

from pingpull.client.content import ContentClient
from tests.support.live import LiveContent

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


async def raw_get(server: LiveContent, target: str, fields: list[tuple[str, str]]) -> Answer:
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    client = h11.Connection(h11.CLIENT)
    async with stream:
        request = h11.Request(method="GET", target=target, headers=[("Host", "t"), *fields])
        await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
        status, head, body = 0, [], b""
        with trio.fail_after(10):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(1 << 16))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    head = [(k, v) for k, v in event.headers.raw_items() if k.lower() != b"date"]
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return status, head, body


def lane_answers(server: LiveContent) -> float:
    return server.context.metrics.inbox_fast_answers._value.get()  # type: ignore[attr-defined]


@dataclass
class Bob:
    server: LiveContent
    client: ContentClient  # as bob
    as_ana: ContentClient
    conversation_id: int

    async def new_device_token(self) -> str:
        """A token this process has never verified: its first request is the route's."""
        token: str = (await self.client.link_device())["token"]
        return token


@pytest.fixture
async def bob(live: LiveContent) -> Bob:
    """bob, whose inbox holds three messages from ana (one with non-ASCII text and escapes)."""
    as_ana, _ = await live.account("ana")
    as_bob, bob = await live.account("bob")
    conversation = await as_ana.create_conversation([bob["user_id"]])
    for body in ("hello", 'ça va? 👋 "quoted" \\ back', "third"):
        await as_ana.send(conversation["id"], body)
    return Bob(live, as_bob, as_ana, conversation["id"])


CASES = {
    "no query": "/v1/inbox",
    "from the start": "/v1/inbox?after=0",
    "one page of one": "/v1/inbox?after=0&limit=1",
    "limit first": "/v1/inbox?limit=2&after=1",
    "up to date": "/v1/inbox?after=3",
    "past the head": "/v1/inbox?after=99",
    "leading zeros": "/v1/inbox?after=007",
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_lane_answers_the_same_bytes_as_the_route(bob: Bob, case: str) -> None:
    server = bob.server
    fields = [("Authorization", f"Bearer {await bob.new_device_token()}"), ("User-Agent", "pingpull-test")]
    before = lane_answers(server)
    by_route = await raw_get(server, CASES[case], fields)
    assert lane_answers(server) == before, "the first request must be the route's (token not verified yet)"
    again = await raw_get(server, CASES[case], fields)
    assert lane_answers(server) == before + 1
    assert again == by_route
    assert by_route[0] == 200


LEFT_TO_THE_ROUTE = {
    "a negative cursor": ("/v1/inbox?after=-1", 400),
    "not a number": ("/v1/inbox?after=abc", 400),
    "an empty value": ("/v1/inbox?after=", 400),
    "an unknown parameter": ("/v1/inbox?after=0&page=2", 400),
    "a limit of zero": ("/v1/inbox?limit=0", 400),
    "a limit over the bound": ("/v1/inbox?limit=10001", 400),
    "a cursor over the bound": (f"/v1/inbox?after={2**63}", 400),
    "after twice": ("/v1/inbox?after=0&after=1", 400),
    "a trailing slash": ("/v1/inbox/?after=0", 200),
}


@pytest.mark.parametrize("case", list(LEFT_TO_THE_ROUTE))
async def test_what_the_lane_does_not_decide_goes_to_the_route(bob: Bob, case: str) -> None:
    server = bob.server
    fields = [("Authorization", f"Bearer {await bob.new_device_token()}")]
    assert (await raw_get(server, "/v1/inbox", fields))[0] == 200  # the token is known now
    before = lane_answers(server)
    target, status = LEFT_TO_THE_ROUTE[case]
    assert (await raw_get(server, target, fields))[0] == status
    assert lane_answers(server) == before


async def test_unknown_tokens_and_devices_go_to_the_route(bob: Bob) -> None:
    server, token = bob.server, await bob.new_device_token()
    assert (await raw_get(server, "/v1/inbox", [("Authorization", f"Bearer {token}")]))[0] == 200
    before = lane_answers(server)
    assert (await raw_get(server, "/v1/inbox", []))[0] == 401
    assert (await raw_get(server, "/v1/inbox", [("Authorization", "Bearer nonsense")]))[0] == 401
    assert (await raw_get(server, "/v1/inbox", [("Authorization", f"Basic {token}")]))[0] == 401
    twice = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    assert (await raw_get(server, "/v1/inbox", twice))[0] in (200, 400, 401)  # the route's call
    assert lane_answers(server) == before


async def test_the_lane_sees_new_messages_at_once(bob: Bob) -> None:
    server = bob.server
    fields = [("Authorization", f"Bearer {await bob.new_device_token()}")]
    assert (await raw_get(server, "/v1/inbox?after=3", fields))[2] == b'{"head":3,"items":[]}\n'
    before = lane_answers(server)
    sent = await bob.as_ana.send(bob.conversation_id, "fourth")
    status, _, body = await raw_get(server, "/v1/inbox?after=3", fields)
    assert lane_answers(server) == before + 1
    page = json.loads(body)
    assert (status, page["head"], [item["message"]["id"] for item in page["items"]]) == (200, 4, [sent["id"]])
