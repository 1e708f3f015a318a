"""The content service's Quart app: wiring, the error boundary, request logs and metrics.

This is the one place where errors become HTTP: ContentError subclasses, quart-schema validation
failures, Werkzeug HTTP errors and anything unexpected are all rendered as problem+json. Handlers
stay free of response-shaping code.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio
from pydantic import ValidationError
from quart import Response, current_app, g, request
from quart_schema import QuartSchema, RequestSchemaValidationError
from quart_schema.openapi import HttpSecurityScheme
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import IntegerConverter

from content_svc import coalesced_writes, keep_alive, schema_cache, socket_writes, zero_copy
from content_svc.auth import DeviceCache, Principal, authenticate
from content_svc.context import ContentContext
from content_svc.errors import (
    PROBLEM_CONTENT_TYPE,
    ContentError,
    InvalidRequest,
    UnsupportedMediaType,
    problem_body,
)
from content_svc.fast_path import ASGIApp
from content_svc.inbox_lane import InboxFastLane
from content_svc.media.fast_lane import MediaFastLane
from content_svc.media.streaming import PacedHTTPConnection, StreamingBody, is_streaming_route
from content_svc.observe import observe_request
from content_svc.openapi import PingpullOpenAPI
from content_svc.schemas import MAX_ID
from content_svc.send_lane import SendFastLane
from pingpull.db.engine import DatabaseUnavailable
from pingpull.wire import MAX_U64

log = logging.getLogger("pingpull.content")

_EXTENSION = "pingpull"
assert MAX_ID < MAX_U64


class IdConverter(IntegerConverter):
    """Path ids: digits only. An id outside 1..2**63-1 cannot exist, so it becomes 0, which no row has:
    the route still matches and answers an ordinary 404. (Refusing it in the converter would make
    Werkzeug fall through to the next rule and answer a misleading 405.)"""

    def to_python(self, value: str) -> int:
        number = int(value)
        return number if 1 <= number <= MAX_ID else 0


class _Request(TrioRequest):
    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        streaming = is_streaming_route(method, path)
        if streaming:
            # Upload routes check their own (much larger) limit on the total streamed.
            kwargs["max_content_length"] = None
        super().__init__(method, scheme, path, *args, **kwargs)
        if streaming:
            self.body = StreamingBody(self.content_length)

    def on_json_loading_failed(self, error: Exception) -> Any:
        raise InvalidRequest(f"the body is not valid JSON: {error}")

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        try:
            return await super().get_json(force, silent, cache)
        except UnicodeDecodeError as exc:  # Quart decodes before parsing and lets this escape
            raise InvalidRequest("the body is not valid UTF-8") from exc


def create_app(ctx: ContentContext) -> QuartTrio:
    schema_cache.install()
    coalesced_writes.install()
    socket_writes.install(ctx.settings.send_stall_timeout_s)
    zero_copy.install()
    keep_alive.install()
    app = QuartTrio("pingpull.content")
    app.request_class = _Request
    app.asgi_http_class = PacedHTTPConnection
    app.config.update(
        MAX_CONTENT_LENGTH=ctx.settings.max_request_body_bytes,
        BODY_TIMEOUT=ctx.settings.request_timeout_s,
        RESPONSE_TIMEOUT=ctx.settings.request_timeout_s,
        JSON_SORT_KEYS=False,
        PROPAGATE_EXCEPTIONS=False,
    )
    app.url_map.converters["id"] = IdConverter
    app.url_map.strict_slashes = False
    app.extensions[_EXTENSION] = ctx
    devices = app.extensions["pingpull.devices"] = DeviceCache()
    QuartSchema(
        app,
        openapi_path="/v1/openapi.json",
        redoc_ui_path=None,
        scalar_ui_path=None,
        swagger_ui_path="/v1/docs",
        info={"title": "pingpull content API", "version": "1"},
        security_schemes={"bearer": HttpSecurityScheme(scheme="bearer", bearer_format="JWT")},
        security=[{"bearer": []}],
        openapi_provider_class=PingpullOpenAPI,
    )

    from content_svc.routes import accounts, conversations, inbox, media, ops, tus

    blueprints = (accounts, conversations, inbox, media, tus, ops)
    for blueprint in (module.blueprint for module in blueprints):
        app.register_blueprint(blueprint)

    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.register_error_handler(ContentError, _content_error)
    app.register_error_handler(DatabaseUnavailable, _database_unavailable)
    app.register_error_handler(RequestSchemaValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    # Each lane answers what memory decides and hands the rest inward, to Quart last.
    lanes: ASGIApp = MediaFastLane(app.asgi_app, ctx, devices)
    lanes = InboxFastLane(lanes, ctx, devices, app.json)
    lanes = SendFastLane(lanes, ctx, devices, app.json)
    app.asgi_app = _shield_final_send(lanes)  # type: ignore[method-assign]
    return app


def _shield_final_send(asgi_app: Any) -> Any:
    """Shield the last `http.response.body` send from cancellation.

    When the app answers before the client has sent its whole body (a 401, 405 or 415 on a request
    whose body is still in flight), hypercorn's trio worker closes the connection from *inside* that
    send, while quart-trio, seeing the disconnect, cancels the request's nursery: the close is
    cancelled half-way, the client hangs and the socket leaks in CLOSE-WAIT. Shielding the final send
    lets the close finish. (tests/e2e/test_fuzz_openapi.py pins it.)"""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def send_shielded(message: Any) -> None:
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await asgi_app(scope, receive, send_shielded)

    return app


def context() -> ContentContext:
    ctx: ContentContext = current_app.extensions[_EXTENSION]
    return ctx


def no_content(status: int = 204) -> Response:
    """An answer without a body: no Content-Type (there is no representation), and on a 204 no
    Content-Length either (RFC 9110 §8.6 forbids it there; a 201 keeps its `0`, or HTTP/1.1 would
    have to close the connection to end the answer)."""
    # Not `quart.Response(status=204)`: with no body, Quart builds an iterable body that it drains
    # through asyncio's executor, which breaks the connection under quart-trio.
    response: Response = current_app.response_class(b"", status=status)
    del response.headers["Content-Type"]
    if status == 204:
        del response.headers["Content-Length"]
    return response


async def principal() -> Principal:
    """The authenticated device of this request (401 problem otherwise)."""
    found: Principal | None = g.get("principal")
    if found is None:
        found = await authenticate(context(), current_app.extensions["pingpull.devices"])
        g.principal = found
    return found


# --- request lifecycle -------------------------------------------------------------------------


async def _start_request() -> None:
    g.started_at = time.perf_counter()
    if (
        request.method in ("POST", "PUT", "PATCH")
        and _expects_json()
        and request.mimetype != "application/json"
    ):
        # quart-schema would read a non-JSON body as null and report a confusing schema error.
        length = request.content_length
        if length or request.headers.get("Transfer-Encoding"):
            raise UnsupportedMediaType(
                f"expected application/json, got {request.mimetype or 'no content type'}"
            )


def _expects_json() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return view is not None and hasattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE)


async def _finish_request(response: Response) -> Response:
    body = request.body
    if isinstance(body, StreamingBody) and request.http_version in ("1.0", "1.1") and not body.complete:
        # An upload answered before its body was read (a 413, 429 or 401): hypercorn closes such a
        # connection rather than read up to 2 GiB it does not want. Say so, or the client reuses it and
        # its next request meets a closed socket. (Small bodies of other routes are read and dropped.)
        response.headers["Connection"] = "close"
    started = g.get("started_at")
    observe_request(
        context().metrics,
        method=request.method,
        route=request.url_rule.rule if request.url_rule is not None else "<unmatched>",
        path=request.path,
        status=response.status_code,
        elapsed_s=time.perf_counter() - started if started is not None else 0.0,
        principal=g.get("principal"),
        http_version=request.http_version,
    )
    return response


# --- the error boundary ------------------------------------------------------------------------


def _problem(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = current_app.response_class(
        current_app.json.dumps(body), status=body["status"], content_type=PROBLEM_CONTENT_TYPE
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


async def _content_error(error: ContentError) -> Response:
    return _problem(error.problem(), error.headers)


async def _database_unavailable(error: DatabaseUnavailable) -> Response:
    log.warning("database unavailable on %s %s: %s", request.method, request.path, error.detail)
    body = problem_body(
        503,
        "database-unavailable",
        "The database cannot take this request now",
        "retry later",
        retry_after_s=error.retry_after_s,
    )
    return _problem(body, {"Retry-After": str(error.retry_after_s)})


async def _validation_error(error: RequestSchemaValidationError) -> Response:
    cause = error.validation_error
    errors: list[dict[str, Any]] = []
    if isinstance(cause, ValidationError):
        errors = [
            {"field": ".".join(str(p) for p in item["loc"]) or "(body)", "message": item["msg"]}
            for item in cause.errors(include_url=False, include_input=False)
        ]
    else:
        errors = [{"field": "(body)", "message": str(cause)}]
    return _problem(
        problem_body(400, "invalid-request", "The request is not valid", "see errors", errors=errors)
    )


_HTTP_SLUGS = {
    400: "invalid-request",
    404: "not-found",
    405: "method-not-allowed",
    408: "request-timeout",
    413: "payload-too-large",
    415: "unsupported-media-type",
    416: "range-not-satisfiable",
}


async def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    detail = error.description or error.name
    allowed = error.valid_methods if isinstance(error, MethodNotAllowed) else None
    headers = {"Allow": ", ".join(allowed)} if allowed else None
    slug = _HTTP_SLUGS.get(status, "http-error")
    return _problem(problem_body(status, slug, error.name, detail), headers)


async def _unexpected_error(error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path, exc_info=error)
    return _problem(problem_body(500, "internal", "Internal server error", "the error was logged"))
