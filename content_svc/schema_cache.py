"""One pydantic `TypeAdapter` per type for quart-schema, instead of one per request.

quart-schema converts every route's return value and headers with ``TypeAdapter(type(value))`` and
validates every request body and query string with ``TypeAdapter(model)``, building the adapter
afresh each time. Building one means generating a core schema: about 33 µs for a plain ``dict``,
twice per JSON answer (body and headers). A short poll costs about 1 ms of CPU in all, so this alone
was several percent of the content service's per-request cost (docs/architecture.md, "Per-request cost").

An adapter is immutable once built and depends only on its type, so it is cached per type here.
quart-schema looks the name up in its module at call time, which is where the cached factory goes.
Types that cannot be hashed (rare generic forms) are built every time, as before.
"""

from __future__ import annotations

from typing import Any

import quart_schema.conversion
from pydantic import TypeAdapter

_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}
_MAX_CACHED_TYPES = 1024  # a bound, not a tuning knob: an API has a few dozen models


def cached_type_adapter(type_: Any, *args: Any, **kwargs: Any) -> TypeAdapter[Any]:
    """`TypeAdapter(type_)`, built once per type (calls with options are never cached)."""
    if args or kwargs:
        return TypeAdapter(type_, *args, **kwargs)
    try:
        found = _ADAPTERS.get(type_)
    except TypeError:  # unhashable
        return TypeAdapter(type_)
    if found is None:
        found = TypeAdapter(type_)
        if len(_ADAPTERS) < _MAX_CACHED_TYPES:
            _ADAPTERS[type_] = found
    return found


def install() -> None:
    """Make quart-schema use the cache. Idempotent."""
    setattr(quart_schema.conversion, "TypeAdapter", cached_type_adapter)  # noqa: B010 - not re-exported


def installed() -> bool:
    return getattr(quart_schema.conversion, "TypeAdapter", None) is cached_type_adapter
