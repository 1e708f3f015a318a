"""Bad input gets a specific 4xx problem, nothing is written, and the service keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pingpull.db.schema import conversations, inbox, messages, push_jobs, users
from tests.support.live import LiveContent


async def _counts(live: LiveContent) -> dict[str, int]:
    async def count(conn: AsyncConnection) -> dict[str, int]:
        return {
            t.name: (await conn.execute(select(func.count()).select_from(t))).scalar_one()
            for t in (users, conversations, messages, inbox, push_jobs)
        }

    return await live.kernel.database.read(count)


def _assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    return body


@pytest.fixture
async def pair(live: LiveContent) -> tuple[Any, int, int]:
    alice, _ = await live.account("alice")
    _, b = await live.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    return alice, conversation["id"], b["user_id"]


SEND_BODIES = [
    (b'{"body": "x"', "application/json", 400, "invalid-request"),  # truncated JSON
    (b"not json at all", "application/json", 400, "invalid-request"),
    (b'["body"]', "application/json", 400, "invalid-request"),  # wrong top-level type
    (b'{"body": 5}', "application/json", 400, "invalid-request"),  # wrong field type
    (b'{"body": "x", "sneaky": 1}', "application/json", 400, "invalid-request"),  # unknown field
    (b'{"body": "x", "media": "abc"}', "application/json", 400, "invalid-request"),
    (b'{"body": "x", "media": ["../../etc/passwd"]}', "application/json", 400, "invalid-request"),
    (b"{}", "application/json", 400, "invalid-request"),  # missing body
    (b'{"body": ""}', "application/json", 422, "unprocessable"),  # nothing to send
    (b'{"body": "x"}', "text/plain", 415, "unsupported-media-type"),
    (b'{"body": "\xff\xfe"}', "application/json", 400, "invalid-request"),  # not UTF-8
]


@pytest.mark.parametrize(("raw", "content_type", "status", "slug"), SEND_BODIES)
async def test_bad_send_bodies(
    live: LiveContent, pair: Any, raw: bytes, content_type: str, status: int, slug: str
) -> None:
    alice, cid, _ = pair
    before = await _counts(live)
    response = await live.http.post(
        f"/v1/conversations/{cid}/messages",
        content=raw,
        headers={
            "Authorization": f"Bearer {alice.token}",
            "Content-Type": content_type,
            "Idempotency-Key": "k",
        },
    )
    _assert_problem(response, status, slug)
    assert await _counts(live) == before
    assert (await live.http.get("/healthz")).status_code == 200


@pytest.mark.parametrize("key", [None, "", "x" * 129, "has space", "ünïcode"])
async def test_send_requires_a_sane_idempotency_key(live: LiveContent, pair: Any, key: str | None) -> None:
    alice, cid, _ = pair
    headers: dict[str, str | bytes] = {"Authorization": f"Bearer {alice.token}"}
    if key is not None:
        headers["Idempotency-Key"] = key.encode("utf-8")
    response = await live.http.post(f"/v1/conversations/{cid}/messages", json={"body": "x"}, headers=headers)
    _assert_problem(response, 400, "invalid-request")


async def test_oversize_request_body_is_413(live: LiveContent, pair: Any) -> None:
    alice, cid, _ = pair
    too_big = "x" * (live.context.settings.max_request_body_bytes + 1)
    response = await live.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"body": too_big},
        headers={"Authorization": f"Bearer {alice.token}", "Idempotency-Key": "big"},
    )
    _assert_problem(response, 413, "payload-too-large")


async def test_message_body_length_limit_is_422(live: LiveContent, pair: Any) -> None:
    alice, cid, _ = pair
    limit = live.context.settings.max_message_body_chars
    response = await live.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"body": "é" * (limit + 1)},
        headers={"Authorization": f"Bearer {alice.token}", "Idempotency-Key": "long"},
    )
    _assert_problem(response, 422, "unprocessable")
    ok = await alice.send(cid, "é" * limit)
    assert len(ok["body"]) == limit


async def test_media_ids_that_do_not_exist_are_refused(live: LiveContent, pair: Any) -> None:
    alice, cid, _ = pair
    before = await _counts(live)
    response = await live.http.post(
        f"/v1/conversations/{cid}/messages",
        json={"body": "look", "media": ["A" * 22]},
        headers={"Authorization": f"Bearer {alice.token}", "Idempotency-Key": "m"},
    )
    body = _assert_problem(response, 422, "unprocessable")
    assert body["unknown_media_ids"] == ["A" * 22]
    assert await _counts(live) == before


@pytest.mark.parametrize(
    "query",
    [
        "after=-1",
        "after=abc",
        "after=99999999999999999999999",
        "limit=0",
        "limit=-5",
        "limit=100000",
        "bogus=1",
    ],
)
async def test_bad_inbox_queries(live: LiveContent, pair: Any, query: str) -> None:
    alice, _, _ = pair
    response = await live.http.get(f"/v1/inbox?{query}", headers={"Authorization": f"Bearer {alice.token}"})
    _assert_problem(response, 400, "invalid-request")


async def test_huge_after_and_limit_within_bounds_are_fine(live: LiveContent, pair: Any) -> None:
    alice, _, _ = pair
    page = await alice.pull(after=2**63 - 1, limit=10_000)
    assert page == {"head": 0, "items": []}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/conversations/0",
        "/v1/conversations/-1",
        "/v1/conversations/abc",
        "/v1/conversations/99999999999999999999999",
        "/v1/conversations/9223372036854775807",
        "/v1/nothing-here",
    ],
)
async def test_unknown_or_impossible_ids_are_404(live: LiveContent, pair: Any, path: str) -> None:
    alice, _, _ = pair
    response = await live.http.get(path, headers={"Authorization": f"Bearer {alice.token}"})
    _assert_problem(response, 404, "not-found")


@pytest.mark.parametrize(
    "body",
    [
        {"members": []},
        {"members": [0]},
        {"members": ["2"]},
        {"members": [2**63]},
        {"members": [2], "title": ""},
        {"members": [2], "title": "x" * 129},
        {"members": [2], "kind": "direct"},
    ],
)
async def test_bad_conversation_bodies(live: LiveContent, pair: Any, body: dict[str, Any]) -> None:
    alice, _, _ = pair
    before = await _counts(live)
    response = await live.http.post(
        "/v1/conversations", json=body, headers={"Authorization": f"Bearer {alice.token}"}
    )
    _assert_problem(response, 400, "invalid-request")
    assert await _counts(live) == before


@pytest.mark.parametrize(
    "body",
    [
        {"handle": "ab"},
        {"handle": "Has Caps"},
        {"handle": "x" * 65},
        {"handle": 5},
        {},
        {"handle": "ok_name", "x": 1},
    ],
)
async def test_bad_account_bodies(live: LiveContent, body: dict[str, Any]) -> None:
    before = await _counts(live)
    _assert_problem(await live.http.post("/v1/accounts", json=body), 400, "invalid-request")
    assert await _counts(live) == before


async def test_taken_handle_is_409(live: LiveContent) -> None:
    await live.account("alice")
    _assert_problem(await live.http.post("/v1/accounts", json={"handle": "alice"}), 409, "handle-taken")


async def test_wrong_method_is_405_with_allow(live: LiveContent) -> None:
    response = await live.http.delete("/v1/inbox")
    _assert_problem(response, 405)
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize(
    "body",
    [
        {"provider": "pigeon", "token": "abcdefgh"},
        {"provider": "fcm", "token": "short"},
        {"provider": "fcm", "token": "has spaces in it"},
        {"provider": "apns", "token": "abcdefgh", "environment": "staging"},
    ],
)
async def test_bad_push_registrations(live: LiveContent, pair: Any, body: dict[str, Any]) -> None:
    alice, _, _ = pair
    me = live.context.verifier.verify(alice.token).device_id
    response = await live.http.put(
        f"/v1/devices/{me}/push", json=body, headers={"Authorization": f"Bearer {alice.token}"}
    )
    _assert_problem(response, 400, "invalid-request")


async def test_ack_body_validation(live: LiveContent, pair: Any) -> None:
    alice, _, _ = pair
    for body in ({"seq": -1}, {"seq": "1"}, {"seq": 1.5}, {}, {"seq": 2**63}):
        response = await live.http.post(
            "/v1/inbox/ack", json=body, headers={"Authorization": f"Bearer {alice.token}"}
        )
        _assert_problem(response, 400, "invalid-request")
