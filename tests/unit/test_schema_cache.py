"""quart-schema's conversions through the per-type TypeAdapter cache: same results, one adapter per type."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import quart_schema.conversion
from pydantic import BaseModel

from content_svc import schema_cache


class Query(BaseModel):
    after: int = 0
    limit: int = 50


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every TypeAdapter actually built, while the cache is installed (and the cache emptied)."""
    built: list[Any] = []

    class CountingAdapter(pydantic.TypeAdapter):  # type: ignore[type-arg]
        def __init__(self, type_: Any, *args: Any, **kwargs: Any) -> None:
            built.append(type_)
            super().__init__(type_, *args, **kwargs)

    monkeypatch.setattr(schema_cache, "TypeAdapter", CountingAdapter)
    monkeypatch.setattr(schema_cache, "_ADAPTERS", {})
    monkeypatch.setattr(quart_schema.conversion, "TypeAdapter", pydantic.TypeAdapter)
    schema_cache.install()
    assert schema_cache.installed()
    return built


def test_answers_and_loads_are_unchanged_and_each_type_is_adapted_once(counted: list[Any]) -> None:
    answer = {"items": [{"seq": 1, "body": "hi"}], "head": 1, "more": False}
    for _ in range(3):
        assert quart_schema.conversion.model_dump(answer) == answer
        assert quart_schema.conversion.model_dump([1, 2]) == [1, 2]
        loaded = quart_schema.conversion.model_load({"after": "5"}, Query, ValueError)
        assert loaded == Query(after=5, limit=50)
    assert sorted(counted, key=str) == sorted([dict, list, Query], key=str)


def test_invalid_input_still_fails_validation(counted: list[Any]) -> None:
    with pytest.raises(ValueError):
        quart_schema.conversion.model_load({"after": "soon"}, Query, ValueError)
    with pytest.raises(ValueError):
        quart_schema.conversion.model_load({"after": "soon"}, Query, ValueError)
    assert counted == [Query]


def test_calls_with_options_are_never_cached(counted: list[Any]) -> None:
    schema_cache.cached_type_adapter(dict, config=None)
    schema_cache.cached_type_adapter(dict, config=None)
    schema_cache.cached_type_adapter(dict)
    schema_cache.cached_type_adapter(dict)
    assert counted == [dict, dict, dict]
