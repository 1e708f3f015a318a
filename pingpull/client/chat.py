"""`pingpull chat`: send and watch messages from a terminal, on the client SDK.

Credentials are kept in `<state dir>/<handle>.json` (registering the account on first use where
registration is open). Every line read from stdin is sent to the direct conversation with `--to`;
everything that arrives in the inbox is printed as one line. The cursor is saved, so a restarted
chat resumes where it left off instead of replaying history.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx
import trio

from pingpull.client.content import ContentClient
from pingpull.client.errors import ApiError
from pingpull.client.signal import DeviceSync


def _load(path: Path) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return loaded


def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
        json.dump(state, fh)
    temporary.replace(path)


def render(item: dict[str, Any], me: int) -> str:
    message = item["message"]
    who = "me" if message["sender_id"] == me else f"user {message['sender_id']}"
    return f"[{item['seq']}] conversation {message['conversation_id']} · {who}: {message['body']}"


async def chat(
    handle: str,
    content_url: str,
    signal_url: str,
    state_dir: Path,
    to_user: int | None,
    *,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
) -> None:
    state_path = state_dir / f"{handle}.json"
    async with httpx.AsyncClient(base_url=content_url, timeout=30) as http:
        state = _load(state_path)
        if state is None:
            created = await ContentClient(http).create_account(handle, "pingpull chat")
            state = {**created, "cursor": 0}
            _save(state_path, state)
        client = ContentClient(http, state["token"])
        me = int(state["user_id"])
        print(f"signed in as {handle} (user {me}, device {state['device_id']})", file=out, flush=True)

        shown_at_send: set[int] = set()  # our own messages, printed when sent; skipped when pulled

        async def show(items: list[dict[str, Any]]) -> None:
            for item in items:
                if item["message"]["id"] not in shown_at_send:
                    print(render(item, me), file=out, flush=True)
            state["cursor"] = items[-1]["seq"]
            _save(state_path, state)

        sync = DeviceSync(client, signal_url, state["token"], cursor=int(state["cursor"]), on_items=show)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run)
            conversation_id = None
            if to_user is not None:
                conversation_id = (await client.create_conversation([to_user]))["id"]
            lines = trio.wrap_file(stdin)
            async for line in lines:
                text = line.rstrip("\n")
                if not text:
                    continue
                if conversation_id is None:
                    print("pass --to USER_ID to send", file=out, flush=True)
                    continue
                try:
                    sent = await client.send(conversation_id, text)
                except ApiError as exc:
                    print(f"not sent: {exc}", file=out, flush=True)
                    continue
                shown_at_send.add(sent["id"])
                print(f"[sent] conversation {conversation_id} · me: {text}", file=out, flush=True)
            # stdin closed: keep listening until interrupted, like `tail -f`.
            await trio.sleep_forever()
