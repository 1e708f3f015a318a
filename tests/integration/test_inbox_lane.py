"""The inbox fast lane answers `GET /v1/inbox` and `POST /v1/inbox/ack` exactly as the Quart routes do,
byte for byte on the wire, and leaves every request it cannot decide from memory to the routes (an ack
with the body the lane has already read, replayed).

Each case is sent twice over a raw socket on a fresh connection, with a token this process has not
verified yet (the route answers and verifies it), then again (the lane answers). The answers must be the same
bytes apart from the Date header. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from pingpull.client.content import ContentClient
from pingpull.db.schema import device_cursors
from tests.support.live import LiveContent
from tests.support.raw_http import Answer, raw_exchange

ACK_PATH = "/v1/inbox/ack"


async def raw_get(server: LiveContent, target: str, fields: list[tuple[str, str]]) -> Answer:
    return await raw_exchange(server, "GET", target, fields)


async def raw_post(
    server: LiveContent, target: str, fields: list[tuple[str, str]], body: bytes, *, chunked: bool = False
) -> Answer:
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(body)))
    return await raw_exchange(server, "POST", target, [*fields, framing], body)


def lane_answers(server: LiveContent) -> float:
    """Pulls and acks the lane answered."""
    counter = server.context.metrics.fast_lane_answers
    return sum(counter.labels(route)._value.get() for route in ("/v1/inbox", ACK_PATH))  # type: ignore[attr-defined]


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


# --- the ack ------------------------------------------------------------------------------------------

JSON = ("Content-Type", "application/json")


async def cursor_of(server: LiveContent, device_id: int) -> int | None:
    async def query(conn: AsyncConnection) -> int | None:
        found = await conn.execute(
            select(device_cursors.c.acked_seq).where(device_cursors.c.device_id == device_id)
        )
        return found.scalar_one_or_none()

    return await server.context.database.read(query)


ACKS = {
    "compact": b'{"seq":1}',
    "spaced": b'{ "seq" : 2 }',
    "the head": b'{"seq": 3}',
    "zero": b'{"seq": 0}',
}


@pytest.mark.parametrize("case", list(ACKS))
async def test_the_lane_acks_with_the_same_bytes_as_the_route(bob: Bob, case: str) -> None:
    server = bob.server
    fields = [("Authorization", f"Bearer {await bob.new_device_token()}"), JSON]
    before = lane_answers(server)
    by_route = await raw_post(server, ACK_PATH, fields, ACKS[case])
    assert lane_answers(server) == before
    again = await raw_post(server, ACK_PATH, fields, ACKS[case])
    assert lane_answers(server) == before + 1
    assert again == by_route
    assert by_route[0] == 204


async def test_an_ack_by_the_lane_moves_the_cursor_forward_only(bob: Bob) -> None:
    server = bob.server
    linked = await bob.client.link_device()
    fields = [("Authorization", f"Bearer {linked['token']}"), JSON]
    assert (await raw_get(server, "/v1/inbox", fields[:1]))[0] == 200  # the route knows the token now
    before = lane_answers(server)
    assert (await raw_post(server, ACK_PATH, fields, b'{"seq": 2}'))[0] == 204
    assert await cursor_of(server, linked["device_id"]) == 2
    assert (await raw_post(server, ACK_PATH, fields, b'{"seq": 1}'))[0] == 204
    assert await cursor_of(server, linked["device_id"]) == 2
    assert lane_answers(server) == before + 2


ACKS_LEFT_TO_THE_ROUTE: dict[str, tuple[list[tuple[str, str]], bytes, int]] = {
    "past the head": ([JSON], b'{"seq": 4}', 422),
    "a string": ([JSON], b'{"seq": "1"}', 400),
    "a float": ([JSON], b'{"seq": 1.0}', 400),
    "a boolean": ([JSON], b'{"seq": true}', 400),
    "negative": ([JSON], b'{"seq": -1}', 400),
    "another field": ([JSON], b'{"seq": 1, "more": 2}', 400),
    "not JSON": ([JSON], b'{"seq": ', 400),
    "a list": ([JSON], b"[1]", 400),
    "no content type": ([], b'{"seq": 1}', 415),
    "text": ([("Content-Type", "text/plain")], b'{"seq": 1}', 415),
    "JSON with a charset": ([("Content-Type", "application/json; charset=utf-8")], b'{"seq": 1}', 204),
    "a body over the lane's size": ([JSON], b'{"seq": 1}' + b" " * 300, 204),
    "UTF-16": ([JSON], '{"seq": 1}'.encode("utf-16"), 400),
}


@pytest.mark.parametrize("case", list(ACKS_LEFT_TO_THE_ROUTE))
async def test_acks_the_lane_does_not_decide_go_to_the_route_with_their_body(bob: Bob, case: str) -> None:
    server = bob.server
    token = await bob.new_device_token()
    assert (await raw_get(server, "/v1/inbox", [("Authorization", f"Bearer {token}")]))[0] == 200
    before = lane_answers(server)
    extra, body, status = ACKS_LEFT_TO_THE_ROUTE[case]
    answer = await raw_post(server, ACK_PATH, [("Authorization", f"Bearer {token}"), *extra], body)
    assert answer[0] == status, answer
    assert lane_answers(server) == before
    if status == 422:  # the route ran the unit again on the replayed body and rendered the problem
        assert json.loads(answer[2])["head"] == 3


async def test_a_chunked_ack_goes_to_the_route(bob: Bob) -> None:
    server = bob.server
    token = await bob.new_device_token()
    assert (await raw_get(server, "/v1/inbox", [("Authorization", f"Bearer {token}")]))[0] == 200
    before = lane_answers(server)
    fields = [("Authorization", f"Bearer {token}"), JSON]
    assert (await raw_post(server, ACK_PATH, fields, b'{"seq": 1}', chunked=True))[0] == 204
    assert lane_answers(server) == before
