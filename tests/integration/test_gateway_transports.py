"""Every transport delivers: WebSocket, SSE and long-poll, against the real gateway over TCP."""

from __future__ import annotations

import httpx
import trio
from trio_websocket import open_websocket_url

from pingpull import wire
from tests.support.live import LiveContent


async def _pair(stack: LiveContent) -> tuple[object, dict[str, object], object, dict[str, object], int]:
    alice, a = await stack.account("alice")
    bob, b = await stack.account("bob")
    conversation = await alice.create_conversation([b["user_id"]])
    return alice, a, bob, b, conversation["id"]


async def test_websocket_hello_then_new_frames(stack: LiveContent) -> None:
    alice, _, bob, _, cid = await _pair(stack)
    await alice.send(cid, "before connecting")  # type: ignore[attr-defined]
    url = stack.signal_url.replace("http://", "ws://") + f"/v1/signal?access_token={bob.token}"  # type: ignore[attr-defined]
    async with open_websocket_url(url) as ws:
        hello = wire.decode(await ws.get_message())
        assert hello.kind == wire.Kind.HELLO
        assert hello.head == 1
        assert hello.arg == 1  # heartbeat interval in seconds
        sent = await alice.send(cid, "live")  # type: ignore[attr-defined]
        with trio.fail_after(5):
            new = wire.decode(await ws.get_message())
        assert (new.kind, new.head, new.ref) == (wire.Kind.NEW, 2, sent["id"])


async def test_sse_hello_carries_head_and_events_follow(stack: LiveContent) -> None:
    alice, _, bob, _, cid = await _pair(stack)
    await alice.send(cid, "one")  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {bob.token}", "Last-Event-ID": "0"}  # type: ignore[attr-defined]
    async with (
        httpx.AsyncClient(base_url=stack.signal_url, timeout=10) as client,
        client.stream("GET", "/v1/signal/sse", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        received: list[str] = []
        with trio.fail_after(5):
            async for line in lines:
                received.append(line)
                if line.startswith("data:") and '"heartbeat_s"' in line:
                    break
        assert "retry: 3000" in received
        assert "id: 1" in received and "event: hello" in received
        sent = await alice.send(cid, "two")  # type: ignore[attr-defined]
        event: list[str] = []
        with trio.fail_after(5):
            async for line in lines:
                if line:
                    event.append(line)
                if line.startswith("data:"):
                    break
        assert event == ["id: 2", "event: new", f'data: {{"head":2,"ref":{sent["id"]}}}']


async def test_long_poll_answers_when_head_passes_after(stack: LiveContent) -> None:
    alice, _, bob, _, cid = await _pair(stack)
    await alice.send(cid, "one")  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {bob.token}"}  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=stack.signal_url, timeout=10, headers=headers) as client:
        immediate = await client.get("/v1/signal/poll", params={"after": 0, "timeout": 5})
        assert immediate.status_code == 200 and immediate.json() == {"head": 1}
        timed_out = await client.get("/v1/signal/poll", params={"after": 1, "timeout": 0})
        assert timed_out.status_code == 204
        result: list[httpx.Response] = []

        async def hang() -> None:
            result.append(await client.get("/v1/signal/poll", params={"after": 1, "timeout": 10}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang)
            await trio.sleep(0.2)
            await alice.send(cid, "two")  # type: ignore[attr-defined]
        assert result[0].status_code == 200 and result[0].json() == {"head": 2}


async def test_every_connection_of_every_device_of_the_user_receives(stack: LiveContent) -> None:
    alice, _ = await stack.account("alice")
    bob, b = await stack.account("bob")
    tablet = await bob.link_device("tablet")
    conversation = await alice.create_conversation([b["user_id"]])
    base = stack.signal_url.replace("http://", "ws://") + "/v1/signal?access_token="
    urls = [base + (bob.token or ""), base + (bob.token or ""), base + tablet["token"]]
    async with (
        open_websocket_url(urls[0]) as phone1,
        open_websocket_url(urls[1]) as phone2,
        open_websocket_url(urls[2]) as tab,
    ):
        for ws in (phone1, phone2, tab):
            assert wire.decode(await ws.get_message()).kind == wire.Kind.HELLO
        sent = await alice.send(conversation["id"], "to every screen")
        for ws in (phone1, phone2, tab):
            with trio.fail_after(5):
                frame = wire.decode(await ws.get_message())
            assert (frame.kind, frame.head, frame.ref) == (wire.Kind.NEW, 1, sent["id"])
