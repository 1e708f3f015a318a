"""The content service's exception root and its translation to RFC 9457 problem+json.

Handlers raise `ContentError` subclasses; one error handler (in app.py) renders them. Each problem has
a stable `type` URI that clients may switch on; `title` is fixed per type, `detail` explains this case.
Nothing else reaches a client: validation failures of quart-schema, Werkzeug's HTTP errors and
unexpected exceptions are all rendered as problems too, the last one as an opaque 500.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://pingpull.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class ContentError(Exception):
    """Root of every error the content service raises on purpose."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str = "", **extensions: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions
        self.headers: dict[str, str] = {}

    def problem(self) -> dict[str, Any]:
        return problem_body(self.status, self.slug, self.title, self.detail, **self.extensions)


def problem_body(status: int, slug: str, title: str, detail: str, **extensions: Any) -> dict[str, Any]:
    return {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extensions}


class InvalidRequest(ContentError):
    status = 400
    slug = "invalid-request"
    title = "The request is not valid"


class Unauthorized(ContentError):
    status = 401
    slug = "unauthorized"
    title = "Missing or invalid access token"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Bearer realm="pingpull"'


class Forbidden(ContentError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class NotFound(ContentError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ContentError):
    status = 409
    slug = "conflict"
    title = "Conflicts with the current state"


class HandleTaken(Conflict):
    slug = "handle-taken"
    title = "That handle is taken"


class TooManyDevices(Conflict):
    slug = "too-many-devices"
    title = "The account has reached its device limit"


class PayloadTooLarge(ContentError):
    status = 413
    slug = "payload-too-large"
    title = "The request body is too large"


class UnsupportedMediaType(ContentError):
    status = 415
    slug = "unsupported-media-type"
    title = "The request body must be application/json"


class Unprocessable(ContentError):
    status = 422
    slug = "unprocessable"
    title = "The request is well-formed but cannot be applied"


class IdempotencyKeyReused(Unprocessable):
    slug = "idempotency-key-reused"
    title = "This Idempotency-Key was already used for a different request"


class RateLimited(ContentError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, retry_after_s: float, detail: str = "") -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(detail, retry_after_s=seconds)
        self.headers["Retry-After"] = str(seconds)


class RegistrationClosed(ContentError):
    status = 403
    slug = "registration-closed"
    title = "Open registration is disabled on this server"


class Unavailable(ContentError):
    status = 503
    slug = "unavailable"
    title = "The service is not ready"
