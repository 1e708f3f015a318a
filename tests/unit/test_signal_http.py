"""The gateway's sans-IO HTTP edge, property-tested: any bytes in, a request or a clean refusal out."""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pingpull import wire
from signal_svc.delivery import Delivery
from signal_svc.errors import HttpRefusal
from signal_svc.http import HeadParser, Route, bearer_token, chunk, int_param, problem_bytes, response_bytes

MAX_HEAD = 8192
REFUSAL_STATUSES = {400, 401, 404, 405, 431}


def _feed_in_chunks(data: bytes, cuts: list[int]) -> object:
    parser = HeadParser(MAX_HEAD)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    result: object = None
    for start, end in itertools.pairwise(points):
        result = parser.feed(data[start:end])
        if result is not None:
            return result
    return result


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
def test_arbitrary_bytes_give_a_request_nothing_yet_or_a_refusal(data: bytes, cuts: list[int]) -> None:
    refusal: HttpRefusal | None = None
    try:
        _feed_in_chunks(data, cuts)
    except HttpRefusal as exc:
        refusal = exc
    assert refusal is None or refusal.status in REFUSAL_STATUSES


_PATHS = {
    "/v1/signal": Route.WEBSOCKET,
    "/v1/signal/sse": Route.SSE,
    "/v1/signal/poll": Route.POLL,
    "/healthz": Route.HEALTHZ,
}
_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    path=st.sampled_from(sorted(_PATHS)),
    query=st.dictionaries(_token, _token, max_size=5),
    headers=st.dictionaries(_token.map(lambda t: "x-" + t), _token, max_size=6),
    chunk_size=st.integers(min_value=1, max_value=64),
)
def test_valid_heads_route_correctly_in_any_chunking(
    path: str, query: dict[str, str], headers: dict[str, str], chunk_size: int
) -> None:
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    raw = (
        f"GET {target} HTTP/1.1\r\nHost: gw\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    data = raw.encode() + b"trailing"
    parser = HeadParser(MAX_HEAD)
    request = None
    for i in range(0, len(data), chunk_size):
        request = parser.feed(data[i : i + chunk_size])
        if request is not None:
            break
    assert request is not None
    assert request.route is _PATHS[path]
    assert request.query == query
    assert parser.unread.endswith(b"trailing") or b"trailing".startswith(parser.unread)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 404),
        (b"PUT /v1/signal HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        (b"GET /v1/signal HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", 400),
        (b"GET /v1/signal HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /v1/signal?a=1&a=2 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX: " + b"y" * MAX_HEAD + b"\r\n\r\n", 431),
        (b"GET /h\xffz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
def test_specific_refusals(raw: bytes, status: int) -> None:
    with pytest.raises(HttpRefusal) as refused:
        HeadParser(MAX_HEAD).feed(raw)
    assert refused.value.status == status


def _request(target: str, *headers: tuple[bytes, bytes]) -> object:
    raw = (
        b"GET "
        + target.encode()
        + b" HTTP/1.1\r\nHost: a\r\n"
        + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    )
    request = HeadParser(MAX_HEAD).feed(raw + b"\r\n")
    assert request is not None
    return request


def test_bearer_token_from_header_or_query_but_not_both() -> None:
    assert bearer_token(_request("/v1/signal", (b"Authorization", b"Bearer abc"))) == "abc"  # type: ignore[arg-type]
    assert bearer_token(_request("/v1/signal?access_token=xyz")) == "xyz"  # type: ignore[arg-type]
    for request, status in (
        (_request("/v1/signal"), 401),
        (_request("/v1/signal", (b"Authorization", b"Basic abc")), 401),
        (_request("/v1/signal?access_token=x", (b"Authorization", b"Bearer y")), 400),
    ):
        with pytest.raises(HttpRefusal) as refused:
            bearer_token(request)  # type: ignore[arg-type]
        assert refused.value.status == status


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("0", True),
        ("7", True),
        ("-1", False),
        ("x", False),
        ("", False),
        ("1" * 21, False),
        ("%D9%A3", False),
    ],
)
def test_int_param(value: str, ok: bool) -> None:
    request = _request(f"/v1/signal/poll?after={value}")
    if ok:
        assert int_param(request, "after", default=None, low=0, high=10**19) == int(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(HttpRefusal):
            int_param(request, "after", default=None, low=0, high=10**19)  # type: ignore[arg-type]


def test_answers_are_valid_http_for_a_client() -> None:
    for data in (
        response_bytes(200, b'{"head":3}', keep_alive=True),
        problem_bytes(HttpRefusal(503, "draining", "bye", headers=[(b"Retry-After", b"2")])),
        Delivery(wire.encode_new(9, 1)).poll_answer,
    ):
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
        client.send(h11.EndOfMessage())
        client.receive_data(data)
        response = client.next_event()
        assert isinstance(response, h11.Response)
        body = b""
        while True:
            event = client.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            else:
                break
        assert isinstance(event, h11.EndOfMessage)
        assert body


def test_pre_encoded_frames() -> None:
    frame = wire.encode_new(5, 77)
    delivery = Delivery(frame)
    assert delivery.ws == b"\x82\x14" + frame
    assert delivery.head == 5
    assert delivery.sse == chunk(b'id: 5\nevent: new\ndata: {"head":5,"ref":77}\n\n')
    assert delivery.ws is delivery.ws  # encoded once, shared by every connection
