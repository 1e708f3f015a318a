"""Request and response schemas, declared once: they validate traffic and generate /v1/openapi.json.

Requests are strict: unknown fields are rejected (a client typo must not be silently ignored) and
types are not coerced ("5" is not an id). Ids are JSON integers bounded to 63 bits so every backend
can store them; media ids are opaque strings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_ID = 2**63 - 1
MAX_PAGE_LIMIT = 10_000  # the largest `limit` a page request may ask for
# Patterns without anchors, for `re.fullmatch` where a fast lane checks the same input as the schema.
MEDIA_ID_PATTERN = "[A-Za-z0-9_-]{16,64}"
IDEMPOTENCY_KEY_PATTERN = r"[\x21-\x7e]+"
IDEMPOTENCY_KEY_MAX_CHARS = 128

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Seq = Annotated[int, Field(ge=0, le=MAX_ID)]
Handle = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.]{3,64}$")]
DeviceName = Annotated[str, StringConstraints(max_length=64)]
MediaId = Annotated[str, StringConstraints(pattern=f"^{MEDIA_ID_PATTERN}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Open(BaseModel):
    """Responses: strict types, but the server may add fields later without breaking clients."""

    model_config = ConfigDict(strict=True, frozen=True)


# --- accounts and devices ----------------------------------------------------------------------


class CreateAccount(Strict):
    handle: Handle = Field(description="Lowercase letters, digits, '_' and '.', 3 to 64 characters.")
    device_name: DeviceName = ""


class AccountCreated(Open):
    user_id: Id
    device_id: Id
    token: str


class LinkDevice(Strict):
    device_name: DeviceName = ""


class DeviceLinked(Open):
    device_id: Id
    token: str


class TokenRefreshed(Open):
    token: str
    expires_at: int


class PushRegistration(Strict):
    provider: Literal["apns", "fcm"]
    token: Annotated[str, StringConstraints(min_length=8, max_length=4096, pattern=r"^[\x21-\x7e]+$")]
    environment: Literal["production", "sandbox"] = "production"


# --- conversations and messages ----------------------------------------------------------------


class CreateConversation(Strict):
    members: list[Id] = Field(min_length=1, description="User ids; you are added if you are not listed.")
    title: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, description="Two members and no title make a direct conversation, unique per pair."
    )


class MemberOut(Open):
    user_id: Id
    role: Literal["admin", "member"]


class ConversationOut(Open):
    id: Id
    kind: Literal["direct", "group"]
    title: str | None
    created_by: Id
    created_at_ms: int
    members: list[MemberOut]


class ConversationList(Open):
    items: list[ConversationOut]
    next_after: Id | None = Field(description="Pass as `after` for the next page; null on the last page.")


class ListQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)  # query strings are text
    after: Seq = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_LIMIT)] | None = None


class HistoryQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)
    before: Id | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_LIMIT)] | None = None


class SendMessage(Strict):
    body: str = Field(description="Opaque text (may be ciphertext).")
    media: list[MediaId] = Field(default_factory=list)


class MessageOut(Open):
    id: Id
    conversation_id: Id
    sender_id: Id
    body: str
    media: list[str]
    sent_at_ms: int


class MessagePage(Open):
    items: list[MessageOut]
    next_before: Id | None = Field(description="Pass as `before` for older messages; null when none remain.")


# --- inbox -------------------------------------------------------------------------------------


class InboxItem(Open):
    seq: Seq
    message: MessageOut


class InboxPage(Open):
    head: Seq
    items: list[InboxItem]


class Ack(Strict):
    seq: Seq


class Problem(Open):
    type: str
    title: str
    status: int
    detail: str


class SendHeaders(BaseModel):
    """`Idempotency-Key`: the client's id for this send; retries with the same key never duplicate."""

    idempotency_key: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=IDEMPOTENCY_KEY_MAX_CHARS, pattern=f"^{IDEMPOTENCY_KEY_PATTERN}$"
        ),
    ]


class MediaOut(Open):
    media_id: str = Field(description="Random and unguessable; put it in a message's `media` list.")
    size: int
    sha256: str = Field(description="Hex sha-256 of the bytes; the download's strong ETag.")
    content_type: str
