"""Group membership over time: who receives, who reads, and what a newcomer sees."""

from __future__ import annotations

import pytest

from pingpull.client.errors import ApiError
from tests.support.live import LiveContent


async def test_removed_member_stops_receiving_and_reading(live: LiveContent) -> None:
    owner, _ = await live.account("owner")
    member, m = await live.account("member")
    _, other = await live.account("other")
    group = await owner.create_conversation([m["user_id"], other["user_id"]], title="g")
    await owner.send(group["id"], "before")
    response = await owner.request("DELETE", f"/v1/conversations/{group['id']}/members/{m['user_id']}")
    assert response.status_code == 204
    await owner.send(group["id"], "after")

    head, items = await member.pull_all(0)
    assert head == 1
    assert [it["message"]["body"] for it in items] == ["before"]
    with pytest.raises(ApiError) as caught:
        await member.history(group["id"])
    assert caught.value.status == 404
    with pytest.raises(ApiError) as caught:
        await member.send(group["id"], "still here?")
    assert caught.value.status == 404


async def test_added_member_receives_from_now_and_sees_no_earlier_history(live: LiveContent) -> None:
    owner, _ = await live.account("owner")
    _, m = await live.account("member")
    newcomer, n = await live.account("newcomer")
    group = await owner.create_conversation([m["user_id"]], title="g")
    await owner.send(group["id"], "old news")
    response = await owner.request("POST", f"/v1/conversations/{group['id']}/members/{n['user_id']}")
    assert response.status_code == 201
    again = await owner.request("POST", f"/v1/conversations/{group['id']}/members/{n['user_id']}")
    assert again.status_code == 204
    await owner.send(group["id"], "welcome")

    head, items = await newcomer.pull_all(0)
    assert head == 1
    assert [it["message"]["body"] for it in items] == ["welcome"]
    history = await newcomer.history(group["id"])
    assert [msg["body"] for msg in history["items"]] == ["welcome"]


async def test_member_may_leave_and_the_last_admin_hands_over(live: LiveContent) -> None:
    owner, o = await live.account("owner")
    member, m = await live.account("member")
    group = await owner.create_conversation([m["user_id"]], title="g")
    response = await owner.request("DELETE", f"/v1/conversations/{group['id']}/members/{o['user_id']}")
    assert response.status_code == 204
    after = (await member.request("GET", f"/v1/conversations/{group['id']}")).json()
    assert after["members"] == [{"user_id": m["user_id"], "role": "admin"}]


async def test_direct_conversations_have_fixed_members(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    _, b = await live.account("bob")
    _, c = await live.account("carol")
    direct = await alice.create_conversation([b["user_id"]])
    with pytest.raises(ApiError) as caught:
        await alice.request("POST", f"/v1/conversations/{direct['id']}/members/{c['user_id']}")
    assert caught.value.status == 409


async def test_conversation_member_limit(live: LiveContent) -> None:
    owner, _ = await live.account("owner")
    limit = live.context.settings.max_members_per_conversation
    with pytest.raises(ApiError) as caught:
        await owner.create_conversation(list(range(2, limit + 2)), title="too big")
    assert caught.value.status == 422
    with pytest.raises(ApiError) as caught:
        await owner.create_conversation([424242], title="ghost")
    assert caught.value.status == 422
    assert caught.value.problem["unknown_user_ids"] == [424242]
