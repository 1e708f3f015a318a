"""A client for the content API, over httpx (works under trio and asyncio through anyio) or over the
SDK's own `Http1Session` (trio, one keep-alive HTTP/1.1 connection, 0.38-0.53× httpx's CPU per
request: `python -m bench.client_costs`).

Used by tests, benchmarks and the CLI, and a reference for app developers: every call maps to one
row of the API table in docs/api.md, and every problem answer becomes an `ApiError`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterable, Sequence
from typing import Any

import httpx

from pingpull.client.errors import ApiError, TransportError
from pingpull.client.http1 import Http1Response, Http1Session

HttpClient = httpx.AsyncClient | Http1Session
HttpResponse = httpx.Response | Http1Response


class ContentClient:
    def __init__(self, http: HttpClient, token: str | None = None) -> None:
        self.http = http
        self.token = token

    def with_token(self, token: str) -> ContentClient:
        return ContentClient(self.http, token)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
    ) -> HttpResponse:
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = await self.http.request(
                method, path, json=json, params=params, headers=all_headers, content=content
            )
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:200]}
            raise ApiError(
                response.status_code, problem if isinstance(problem, dict) else {"detail": problem}
            )
        return response

    # --- accounts ----------------------------------------------------------------------------------

    async def create_account(self, handle: str, device_name: str = "") -> dict[str, Any]:
        """Register; the returned client is not changed (use `with_token(result['token'])`)."""
        response = await self.request(
            "POST", "/v1/accounts", json={"handle": handle, "device_name": device_name}
        )
        result: dict[str, Any] = response.json()
        return result

    async def link_device(self, device_name: str = "") -> dict[str, Any]:
        result: dict[str, Any] = (
            await self.request("POST", "/v1/devices", json={"device_name": device_name})
        ).json()
        return result

    async def register_push(
        self, device_id: int, provider: str, token: str, environment: str = "production"
    ) -> None:
        await self.request(
            "PUT",
            f"/v1/devices/{device_id}/push",
            json={"provider": provider, "token": token, "environment": environment},
        )

    # --- conversations and messages ------------------------------------------------------------------

    async def create_conversation(self, members: Sequence[int], title: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"members": list(members)}
        if title is not None:
            body["title"] = title
        result: dict[str, Any] = (await self.request("POST", "/v1/conversations", json=body)).json()
        return result

    async def send(
        self,
        conversation_id: int,
        body: str,
        *,
        idempotency_key: str | None = None,
        media: Sequence[str] = (),
    ) -> dict[str, Any]:
        key = idempotency_key or secrets.token_urlsafe(16)
        payload: dict[str, Any] = {"body": body}
        if media:
            payload["media"] = list(media)
        response = await self.request(
            "POST",
            f"/v1/conversations/{conversation_id}/messages",
            json=payload,
            headers={"Idempotency-Key": key},
        )
        result: dict[str, Any] = response.json()
        return result

    async def history(
        self, conversation_id: int, before: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        params = {k: v for k, v in (("before", before), ("limit", limit)) if v is not None}
        result: dict[str, Any] = (
            await self.request("GET", f"/v1/conversations/{conversation_id}/messages", params=params)
        ).json()
        return result

    # --- inbox -----------------------------------------------------------------------------------------

    async def pull(self, after: int, limit: int | None = None) -> dict[str, Any]:
        params: dict[str, int] = {"after": after}
        if limit is not None:
            params["limit"] = limit
        result: dict[str, Any] = (await self.request("GET", "/v1/inbox", params=params)).json()
        return result

    async def pull_all(self, after: int, limit: int | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Pull pages until the cursor reaches the head; returns (head, items in seq order)."""
        items: list[dict[str, Any]] = []
        cursor = after
        while True:
            page = await self.pull(cursor, limit)
            items.extend(page["items"])
            if not page["items"] or page["items"][-1]["seq"] >= page["head"]:
                return page["head"], items
            cursor = page["items"][-1]["seq"]

    async def ack(self, seq: int) -> None:
        await self.request("POST", "/v1/inbox/ack", json={"seq": seq})

    # --- media ---------------------------------------------------------------------------------

    async def upload_media(
        self, data: bytes | AsyncIterable[bytes], content_type: str, *, sha256: bytes | None = None
    ) -> dict[str, Any]:
        """POST /v1/media. Bytes are checked by the server against their sha-256 (computed here for
        `bytes`; pass `sha256` for a stream to have it checked too). Returns media_id, size, sha256."""
        headers = {"Content-Type": content_type}
        digest = hashlib.sha256(data).digest() if isinstance(data, bytes) else sha256
        if digest is not None:
            headers["Content-Digest"] = f"sha-256=:{base64.b64encode(digest).decode()}:"
        response = await self.request("POST", "/v1/media", headers=headers, content=data)
        found: dict[str, Any] = response.json()
        return found

    async def download_media(self, media_id: str, *, start: int = 0, stop: int | None = None) -> bytes:
        """GET /v1/media/{id}, bytes [start, stop) (a Range request unless it is the whole object);
        follows the presigned redirect of an S3 deployment."""
        headers = {}
        if start or stop is not None:
            headers["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
        response = await self.request("GET", f"/v1/media/{media_id}", headers=headers)
        if response.status_code in (301, 302, 303, 307, 308):
            try:
                if isinstance(self.http, httpx.AsyncClient):
                    response = await self.http.get(response.headers["Location"], headers=headers)
                else:  # the object store is another origin
                    async with httpx.AsyncClient() as other_origin:
                        response = await other_origin.get(response.headers["Location"], headers=headers)
            except httpx.TransportError as exc:
                raise TransportError(f"GET presigned media: {exc!r}") from exc
            if response.status_code >= 400:
                raise ApiError(response.status_code, {"detail": response.text[:200]})
        return response.content
