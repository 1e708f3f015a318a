"""The send fast lane answers `POST /v1/conversations/{id}/messages` as the Quart route does, byte for
byte on the wire (answers and refusals), and leaves what it cannot decide to the route with the body
replayed. A token this process has not verified yet always goes to the route first; the same token
again is the lane's. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pingpull.client.content import ContentClient
from pingpull.tokens import ensure_keys
from tests.support.live import LiveContent, live_content, settings_for_test
from tests.support.raw_http import Answer, raw_exchange
from tests.support.services import SqliteTemplate

JSON = ("Content-Type", "application/json")


def lane_sends(server: LiveContent) -> float:
    counter = server.context.metrics.fast_lane_answers
    return counter.labels("/v1/conversations/<id:conversation_id>/messages")._value.get()  # type: ignore[attr-defined]


@dataclass
class Ana:
    server: LiveContent
    client: ContentClient
    conversation_id: int
    bob: ContentClient

    @property
    def path(self) -> str:
        return f"/v1/conversations/{self.conversation_id}/messages"

    async def new_token(self) -> str:
        """A token this process has never verified: its first request is the route's."""
        token: str = (await self.client.link_device())["token"]
        return token

    async def post(
        self, token: str, key: str | None, body: bytes, *extra: tuple[str, str], path: str = ""
    ) -> Answer:
        fields = [("Authorization", f"Bearer {token}"), *extra, ("Content-Length", str(len(body)))]
        if key is not None:
            fields.append(("Idempotency-Key", key))
        return await raw_exchange(self.server, "POST", path or self.path, fields, body)


@pytest.fixture
async def ana(live: LiveContent) -> Ana:
    as_ana, _ = await live.account("ana")
    as_bob, bob = await live.account("bob")
    conversation = await as_ana.create_conversation([bob["user_id"]])
    return Ana(live, as_ana, conversation["id"], as_bob)


def without(answer: Answer, name: bytes) -> Answer:
    status, fields, body = answer
    return status, [(k, v) for k, v in fields if k.lower() != name], body


async def test_a_send_and_its_replay_answer_as_the_route_does(ana: Ana) -> None:
    server = ana.server
    body = json.dumps({"body": 'ça va? 👋 "quoted"', "media": []}).encode()
    first, second, third = await ana.new_token(), await ana.new_token(), await ana.new_token()
    before = lane_sends(server)
    created_by_route = await ana.post(first, "k-1", body, JSON)
    assert lane_sends(server) == before
    replayed_by_lane = await ana.post(first, "k-1", body, JSON)
    assert lane_sends(server) == before + 1
    replayed_by_route = await ana.post(second, "k-1", body, JSON)
    assert replayed_by_lane == replayed_by_route  # the same message, every byte
    assert (b"idempotent-replayed", b"true") in replayed_by_lane[1]
    assert without(created_by_route, b"idempotent-replayed") == without(
        replayed_by_lane, b"idempotent-replayed"
    )
    created_by_lane = await ana.post(first, "k-2", body, JSON)
    assert lane_sends(server) == before + 2
    assert (b"idempotent-replayed", b"false") in created_by_lane[1]
    replay_of_it = await ana.post(third, "k-2", body, JSON)
    assert without(created_by_lane, b"idempotent-replayed") == without(replay_of_it, b"idempotent-replayed")
    page = await ana.bob.pull(0)
    ids = [item["message"]["id"] for item in page["items"]]
    assert ids == [json.loads(created_by_route[2])["id"], json.loads(created_by_lane[2])["id"]]


REFUSALS = {
    "an unknown conversation": ("/v1/conversations/999999/messages", {"body": "hi"}, 404),
    "nothing to send": ("", {"body": ""}, 422),
    "a body too long": ("", {"body": "x" * (16 * 1024 + 1)}, 422),
    "media that is not hers": ("", {"body": "", "media": ["A" * 20]}, None),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refusals_are_the_same_bytes_as_the_route(ana: Ana, case: str) -> None:
    server = ana.server
    path, payload, status = REFUSALS[case]
    body = json.dumps(payload).encode()
    token, key = await ana.new_token(), "r-" + case.replace(" ", "-")
    before = lane_sends(server)
    by_route = await ana.post(token, key, body, JSON, path=path)
    assert lane_sends(server) == before
    by_lane = await ana.post(token, key, body, JSON, path=path)
    assert lane_sends(server) == before + 1
    assert by_lane == by_route
    assert by_route[0] == status if status is not None else 400 <= by_route[0] < 500
    assert (b"content-type", b"application/problem+json") in by_route[1]


LEFT_TO_THE_ROUTE: dict[str, tuple[str | None, bytes, list[tuple[str, str]], str, int]] = {
    "no Idempotency-Key": (None, b'{"body": "hi"}', [JSON], "", 400),
    "a key with a space": ("a key", b'{"body": "hi"}', [JSON], "", 400),
    "a key too long": ("k" * 129, b'{"body": "hi"}', [JSON], "", 400),
    "a body that is not a string": ("n", b'{"body": 5}', [JSON], "", 400),
    "another field": ("f", b'{"body": "hi", "to": 2}', [JSON], "", 400),
    "media not a list": ("m", b'{"body": "hi", "media": "x"}', [JSON], "", 400),
    "a malformed media id": ("i", b'{"body": "hi", "media": ["short"]}', [JSON], "", 400),
    "a media id with a newline": (
        "nl",
        b'{"body": "hi", "media": ["AAAAAAAAAAAAAAAAAAAA\\n"]}',
        [JSON],
        "",
        400,
    ),
    "not JSON": ("j", b'{"body": ', [JSON], "", 400),
    "UTF-16": ("u", '{"body": "hi"}'.encode("utf-16"), [JSON], "", 400),
    "not a JSON content type": ("t", b'{"body": "hi"}', [("Content-Type", "text/plain")], "", 415),
    "JSON with a charset": (
        "c",
        b'{"body": "hi"}',
        [("Content-Type", "application/json; charset=utf-8")],
        "",
        201,
    ),
    "id zero": ("z", b'{"body": "hi"}', [JSON], "/v1/conversations/0/messages", 404),
    "an id with a leading zero": ("l", b'{"body": "hi"}', [JSON], "LEADING", 201),
    "a request over the size limit": ("s", b'{"body": "' + b"x" * 70_000 + b'"}', [JSON], "", 413),
}


@pytest.mark.parametrize("case", list(LEFT_TO_THE_ROUTE))
async def test_what_the_lane_does_not_decide_goes_to_the_route_with_its_body(ana: Ana, case: str) -> None:
    server = ana.server
    key, body, extra, path, status = LEFT_TO_THE_ROUTE[case]
    if path == "LEADING":
        path = f"/v1/conversations/0{ana.conversation_id}/messages"
    token = await ana.new_token()
    assert (await raw_exchange(server, "GET", "/v1/inbox", [("Authorization", f"Bearer {token}")]))[0] == 200
    before = lane_sends(server)
    answer = await ana.post(token, key, body, *extra, path=path)
    assert answer[0] == status, answer
    assert lane_sends(server) == before


@pytest.fixture
async def one_send_per_minute(tmp_path: Path, sqlite_template: SqliteTemplate) -> AsyncIterator[Ana]:
    ensure_keys(tmp_path / "keys")
    settings = settings_for_test(
        sqlite_template.fresh_copy(tmp_path), tmp_path, send_rate_per_s=1 / 60, send_burst=1
    )
    async with live_content(settings) as server:
        as_ana, _ = await server.account("ana")
        as_bob, bob = await server.account("bob")
        conversation = await as_ana.create_conversation([bob["user_id"]])
        yield Ana(server, as_ana, conversation["id"], as_bob)


async def test_a_rate_limited_send_is_the_same_429_as_the_route(one_send_per_minute: Ana) -> None:
    ana = one_send_per_minute
    first, second = await ana.new_token(), await ana.new_token()
    assert (await ana.post(first, "sent", b'{"body": "hi"}', JSON))[
        0
    ] == 201  # the route; the bucket is empty now
    before = lane_sends(ana.server)
    by_lane = await ana.post(first, "late-1", b'{"body": "hi"}', JSON)
    assert lane_sends(ana.server) == before + 1
    by_route = await ana.post(second, "late-2", b'{"body": "hi"}', JSON)
    assert by_lane == by_route
    assert by_lane[0] == 429
    assert any(name.lower() == b"retry-after" for name, _ in by_lane[1])
