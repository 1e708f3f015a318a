"""The OpenAPI document, made to say exactly what the server enforces.

quart-schema builds it from the same models that validate requests; this provider fills the gaps
where its defaults are looser than the server (found by the schemathesis run in tests/e2e):
request bodies and required headers/query parameters are marked required, path ids carry their
range, operations that answer without a body document their status, and every operation documents
its errors as RFC 9457 problems.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from quart_schema.openapi import OpenAPIProvider
from quart_schema.validation import DataSource
from werkzeug.routing import BaseConverter, Rule

_MAX_ID = 2**63 - 1
_NO_CONTENT_ATTRIBUTE = "_pingpull_no_content"
F = TypeVar("F", bound=Callable[..., Any])

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
    },
}


def answers_without_body(*statuses: int) -> Callable[[F], F]:
    """Document the bodiless statuses (201, 204) a route answers with."""

    def mark(func: F) -> F:
        setattr(func, _NO_CONTENT_ATTRIBUTE, statuses)
        return func

    return mark


class PingpullOpenAPI(OpenAPIProvider):
    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        statuses = getattr(func, _NO_CONTENT_ATTRIBUTE, ())
        for operations in paths.values():
            for operation in operations.values():
                # String keys throughout: OpenAPI's own form, and JSON cannot sort mixed keys.
                responses = operation["responses"] = {str(k): v for k, v in operation["responses"].items()}
                for status in statuses:
                    responses[str(status)] = {"description": "Done; no body."}
                responses["default"] = {
                    "description": "An RFC 9457 problem (every 4xx and 5xx).",
                    "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
                }
        return paths, components

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if parameter["schema"] == {"type": "integer"}:
            parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": _MAX_ID}
        return parameter

    def build_querystring_parameters(self, model: type[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters, components = super().build_querystring_parameters(model)
        return _mark_required(parameters, model, kebab=False), components

    def build_headers_parameters(self, model: type[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters, components = super().build_headers_parameters(model)
        return _mark_required(parameters, model, kebab=True), components

    def build_request_body(
        self, model: type[Any], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body, components = super().build_request_body(model, source)
        return {**body, "required": True}, components


def _mark_required(
    parameters: list[dict[str, Any]], model: type[Any], *, kebab: bool
) -> list[dict[str, Any]]:
    required = set(model.model_json_schema().get("required", []))
    if kebab:
        required = {name.replace("_", "-") for name in required}
    return [{**p, "required": True} if p["name"] in required else p for p in parameters]
