"""The messaging API end to end over real HTTP, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from pingpull.client.errors import ApiError
from tests.support.live import LiveContent


async def test_two_users_exchange_a_message(live: LiveContent) -> None:
    alice, a = await live.account("alice")
    bob, b = await live.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    assert conversation["kind"] == "direct"
    sent = await alice.send(conversation["id"], "hello bob")

    page = await bob.pull(after=0)
    assert page["head"] == 1
    assert [item["seq"] for item in page["items"]] == [1]
    assert page["items"][0]["message"] == sent
    assert sent["sender_id"] == a["user_id"]

    await bob.ack(1)
    # The sender's own inbox holds the message too: that is how their other devices sync.
    head, items = await alice.pull_all(0)
    assert head == 1
    assert items[0]["message"]["id"] == sent["id"]


async def test_direct_conversation_is_unique_per_pair(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    bob, b = await live.account("bob")
    first = await alice.create_conversation([b["user_id"]])
    response = await alice.request("POST", "/v1/conversations", json={"members": [b["user_id"]]})
    assert response.status_code == 200
    assert response.json()["id"] == first["id"]
    # ...from either side.
    again = await bob.request("POST", "/v1/conversations", json={"members": [first["created_by"]]})
    assert again.json()["id"] == first["id"]


async def test_idempotent_send_returns_the_original(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    bob, b = await live.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    first = await alice.send(conversation["id"], "once", idempotency_key="key-1")
    response = await alice.request(
        "POST",
        f"/v1/conversations/{conversation['id']}/messages",
        json={"body": "once"},
        headers={"Idempotency-Key": "key-1"},
    )
    assert response.status_code == 201
    assert response.headers["Idempotent-Replayed"] == "true"
    assert response.json() == first
    head, items = await bob.pull_all(0)
    assert head == 1 and len(items) == 1

    with pytest.raises(ApiError) as caught:
        await alice.send(conversation["id"], "something else", idempotency_key="key-1")
    assert caught.value.status == 422
    assert caught.value.slug == "idempotency-key-reused"
    assert (await bob.pull(0))["head"] == 1


async def test_group_fan_out_gives_every_member_a_gap_free_seq(live: LiveContent) -> None:
    users = [await live.account(f"user{i}") for i in range(4)]
    (owner, _), *others = users
    group = await owner.create_conversation([u["user_id"] for _, u in others], title="team")
    assert group["kind"] == "group"
    for i in range(5):
        sender = users[i % 4][0]
        await sender.send(group["id"], f"m{i}")
    for client, _ in users:
        head, items = await client.pull_all(0, limit=2)
        assert head == 5
        assert [it["seq"] for it in items] == [1, 2, 3, 4, 5]
        assert [it["message"]["body"] for it in items] == [f"m{i}" for i in range(5)]


async def test_history_pages_newest_first(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    _, b = await live.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    ids = [(await alice.send(conversation["id"], f"m{i}"))["id"] for i in range(5)]
    page = await alice.history(conversation["id"], limit=2)
    assert [m["id"] for m in page["items"]] == [ids[4], ids[3]]
    page2 = await alice.history(conversation["id"], before=page["next_before"], limit=2)
    assert [m["id"] for m in page2["items"]] == [ids[2], ids[1]]
    page3 = await alice.history(conversation["id"], before=page2["next_before"], limit=2)
    assert [m["id"] for m in page3["items"]] == [ids[0]]
    assert page3["next_before"] is None


async def test_ack_only_moves_forward_and_not_past_head(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    bob, b = await live.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    for i in range(3):
        await alice.send(conversation["id"], f"m{i}")
    await bob.ack(3)
    await bob.ack(1)  # an old ack is accepted and changes nothing
    with pytest.raises(ApiError) as caught:
        await bob.ack(4)
    assert caught.value.status == 422

    from sqlalchemy import select

    from pingpull.db.schema import device_cursors

    async def cursor(conn):  # type: ignore[no-untyped-def]
        return (await conn.execute(select(device_cursors.c.acked_seq))).scalar_one()

    assert await live.kernel.database.read(cursor) == 3


async def test_linked_device_sees_the_same_inbox_and_has_its_own_cursor(live: LiveContent) -> None:
    alice, _ = await live.account("alice")
    bob_phone, b = await live.account("bob")
    linked = await bob_phone.link_device("laptop")
    bob_laptop = live.client(linked["token"])
    conversation = await alice.create_conversation([b["user_id"]])
    await alice.send(conversation["id"], "to both")
    for client in (bob_phone, bob_laptop):
        head, items = await client.pull_all(0)
        assert head == 1 and items[0]["message"]["body"] == "to both"
    refreshed = (await bob_laptop.request("POST", "/v1/token")).json()
    assert (await live.client(refreshed["token"]).pull(0))["head"] == 1
