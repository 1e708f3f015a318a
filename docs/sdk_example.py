"""The client SDK in a few lines: two accounts, a conversation, and a device that stays in sync.

Usage: `.venv/bin/python docs/sdk_example.py [content URL] [signal URL]` against `make run`
(defaults http://127.0.0.1:8080 and ws://127.0.0.1:8081). Bob's device holds a signal connection
(WebSocket, falling back to SSE and long-poll when refused), pulls when told and acks what the app
got; Alice sends. `Http1Session` is the SDK's lean keep-alive connection (httpx works too:
`ContentClient(httpx.AsyncClient(base_url=...))`).
"""

from __future__ import annotations

import secrets
import sys
from typing import Any

import trio

from pingpull.client.content import ContentClient
from pingpull.client.http1 import Http1Session
from pingpull.client.signal import DeviceSync


async def main(content_url: str, signal_url: str) -> None:
    suffix = secrets.token_hex(3)  # handles are unique: run it as often as you like
    async with Http1Session(content_url) as http:
        alice = await ContentClient(http).create_account(f"alice_{suffix}")
        bob = await ContentClient(http).create_account(f"bob_{suffix}")
        chat = await ContentClient(http, alice["token"]).create_conversation([bob["user_id"]])
        arrived = trio.Event()

        async def on_items(items: list[dict[str, Any]]) -> None:  # the SDK acks once this returns
            for item in items:
                print(item["seq"], item["message"]["body"])
            arrived.set()

        sync = DeviceSync(
            content=ContentClient(http, bob["token"]),
            signal_url=signal_url,
            token=bob["token"],
            on_items=on_items,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run)
            await sync.connected.wait()
            await ContentClient(http, alice["token"]).send(chat["id"], "hello from the SDK")
            with trio.fail_after(10):
                await arrived.wait()
            await trio.sleep(0.5)  # the SDK acks right after on_items returns; let it go out
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    args = sys.argv[1:]
    trio.run(
        main,
        args[0] if args else "http://127.0.0.1:8080",
        args[1] if len(args) > 1 else "ws://127.0.0.1:8081",
    )
