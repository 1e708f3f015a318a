"""Who may do what: tokens, membership, own inbox, own device. Non-members see 404, never 403."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pingpull.client.errors import ApiError
from tests.support.live import LiveContent


async def _problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"].endswith("/" + slug)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
)
async def test_missing_or_malformed_tokens_get_401(live: LiveContent, headers: dict[str, str]) -> None:
    response = await live.http.get("/v1/inbox", headers=headers)
    await _problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_forged_expired_and_foreign_tokens_get_401(live: LiveContent) -> None:
    _, alice = await live.account("alice")
    kid = live.context.signer.kid
    now = int(time.time())
    claims = {
        "sub": str(alice["user_id"]),
        "did": alice["device_id"],
        "iat": now,
        "exp": now + 600,
        "iss": "pingpull",
    }
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid})
    hs256 = jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": kid})
    expired = jwt.encode(
        {**claims, "iat": now - 7200, "exp": now - 3600},
        live.kernel.keys.private_keys[kid],
        algorithm="EdDSA",
        headers={"kid": kid},
    )
    for token in (forged, hs256, expired):
        response = await live.http.get("/v1/inbox", headers={"Authorization": f"Bearer {token}"})
        await _problem(response, 401, "unauthorized")


async def test_token_for_a_device_that_does_not_exist_gets_401(live: LiveContent) -> None:
    ghost = live.context.signer.mint(user_id=999, device_id=999)
    response = await live.http.get("/v1/inbox", headers={"Authorization": f"Bearer {ghost}"})
    await _problem(response, 401, "unauthorized")
    # A real user with someone else's device id is just as unknown.
    _, alice = await live.account("alice")
    _, bob = await live.account("bob")
    mixed = live.context.signer.mint(user_id=alice["user_id"], device_id=bob["device_id"])
    response = await live.http.get("/v1/inbox", headers={"Authorization": f"Bearer {mixed}"})
    await _problem(response, 401, "unauthorized")


async def test_non_members_get_404_for_every_conversation_route(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    _, b = await live.account("bob")
    mallory, m = await live.account("mallory")
    conversation = await alice.create_conversation([b["user_id"]])
    cid = conversation["id"]
    await alice.send(cid, "private")
    attempts = [
        ("GET", f"/v1/conversations/{cid}", None),
        ("GET", f"/v1/conversations/{cid}/messages", None),
        ("POST", f"/v1/conversations/{cid}/messages", {"body": "let me in"}),
        ("POST", f"/v1/conversations/{cid}/members/{m['user_id']}", None),
        ("DELETE", f"/v1/conversations/{cid}/members/{b['user_id']}", None),
    ]
    for method, path, body in attempts:
        response = await mallory.http.request(
            method,
            path,
            json=body,
            headers={"Authorization": f"Bearer {mallory.token}", "Idempotency-Key": "k"},
        )
        await _problem(response, 404, "not-found")
    # Exactly what an id that does not exist looks like.
    response = await mallory.http.get(
        "/v1/conversations/987654", headers={"Authorization": f"Bearer {mallory.token}"}
    )
    await _problem(response, 404, "not-found")
    assert (await mallory.pull(0))["head"] == 0
    listed = (await mallory.request("GET", "/v1/conversations")).json()
    assert listed["items"] == []


async def test_inbox_is_per_user(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    bob, b = await live.account("bob")
    carol, _ = await live.account("carol")
    conversation = await alice.create_conversation([b["user_id"]])
    await alice.send(conversation["id"], "for bob only")
    assert (await bob.pull(0))["head"] == 1
    assert (await carol.pull(0)) == {"head": 0, "items": []}


async def test_device_routes_act_only_on_the_callers_own_device(live: LiveContent) -> None:
    alice, a = await live.account("alice")
    _, b = await live.account("bob")
    linked = await alice.link_device("tablet")
    # Another user's device, and even the same user's other device: 404.
    for device_id in (b["device_id"], linked["device_id"]):
        with pytest.raises(ApiError) as caught:
            await alice.register_push(device_id, "fcm", "token-token-token")
        assert caught.value.status == 404
    await alice.register_push(a["device_id"], "fcm", "token-token-token")
    response = await alice.request("DELETE", f"/v1/devices/{a['device_id']}/push")
    assert response.status_code == 204


async def test_only_admins_change_group_membership(live: LiveContent) -> None:
    owner, _ = await live.account("owner")
    member, m = await live.account("member")
    _, x = await live.account("extra")
    group = await owner.create_conversation([m["user_id"]], title="group")
    with pytest.raises(ApiError) as caught:
        await member.request("POST", f"/v1/conversations/{group['id']}/members/{x['user_id']}")
    assert caught.value.status == 403
    with pytest.raises(ApiError) as caught:
        await member.request("DELETE", f"/v1/conversations/{group['id']}/members/{group['created_by']}")
    assert caught.value.status == 403
