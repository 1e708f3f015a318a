"""Range requests, validators, multipart/byteranges framing and upload digests (content_svc/media/ranges).

Example tests pin each rule to RFC 9110 / 9530 / 3230 with byte-exact header values; the multipart body
is assembled the way the download handler does and read back with the standard library's MIME parser.
Property tests throw arbitrary and generated-valid headers at the parsers and check the invariants.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from content_svc.media.ranges import (
    ByteRange,
    DigestError,
    MediaProtocolError,
    MultipartByteranges,
    Partial,
    RangeDecision,
    Unsatisfiable,
    Whole,
    expected_sha256,
    if_none_match_hit,
    if_range_allows_partial,
    new_boundary,
    parse_content_digest,
    parse_http_date,
    parse_legacy_digest,
    parse_range,
    strong_etag,
)

SHA_HEX = hashlib.sha256(b"hello").hexdigest()
SHA = bytes.fromhex(SHA_HEX)
SHA_B64 = base64.b64encode(SHA).decode()
ETAG = f'"{SHA_HEX}"'
# 1994-11-06T08:49:37Z, RFC 9110 §5.6.7's example.
EXAMPLE_DATE_S = 784111777


def partial(*pairs: tuple[int, int]) -> Partial:
    return Partial(tuple(ByteRange(start, stop) for start, stop in pairs))


# --- ByteRange ----------------------------------------------------------------------------------------


def test_byte_range_is_half_open() -> None:
    r = ByteRange(0, 500)
    assert r.length == 500
    assert r.content_range(8000) == "bytes 0-499/8000"
    assert ByteRange(7999, 8000).content_range(8000) == "bytes 7999-7999/8000"


@pytest.mark.parametrize(("start", "stop"), [(5, 5), (6, 5), (-1, 3)])
def test_byte_range_rejects_empty_or_negative(start: int, stop: int) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ByteRange(start, stop)


def test_content_range_refuses_a_range_past_the_size() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        ByteRange(0, 11).content_range(10)


def test_unsatisfiable_content_range() -> None:
    assert Unsatisfiable.content_range(8000) == "bytes */8000"


# --- parse_range: examples ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # RFC 9110 §14.1.2's examples, on a 10,000-byte representation.
        ("bytes=0-499", partial((0, 500))),
        ("bytes=500-999", partial((500, 1000))),
        ("bytes=-500", partial((9500, 10000))),
        ("bytes=9500-", partial((9500, 10000))),
        ("bytes=0-0,-1", partial((0, 1), (9999, 10000))),
        # the last position is clipped to the size; a suffix longer than the size is the whole
        ("bytes=9000-20000", partial((9000, 10000))),
        ("bytes=-20000", partial((0, 10000))),
        ("bytes=0-", partial((0, 10000))),
        # unsatisfiable ranges among satisfiable ones are dropped
        ("bytes=20000-,0-9", partial((0, 10))),
        ("bytes=-0,0-9", partial((0, 10))),
        # request order is kept while nothing overlaps
        ("bytes=900-999,0-99", partial((900, 1000), (0, 100))),
        # the unit is case-insensitive; leading zeros are digits
        ("BYTES=0-9", partial((0, 10))),
        ("bytes=0000-0009", partial((0, 10))),
    ],
)
def test_satisfiable_ranges(header: str, expected: Partial) -> None:
    assert parse_range(header, 10_000) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # overlapping: merged and sorted
        ("bytes=500-700,601-999", partial((500, 1000))),
        ("bytes=0-99,50-149,25-74", partial((0, 150))),
        # adjacent: 0-99 ends where 100-199 starts
        ("bytes=100-199,0-99", partial((0, 200))),
        # once something merges, the result is ascending
        ("bytes=900-950,0-10,5-20", partial((0, 21), (900, 951))),
        # the same range many times costs one copy
        ("bytes=0-9,0-9,0-9,0-9", partial((0, 10))),
        # a suffix overlapping an int-range
        ("bytes=9000-,-500", partial((9000, 10000))),
    ],
)
def test_overlapping_and_adjacent_ranges_are_coalesced(header: str, expected: Partial) -> None:
    assert parse_range(header, 10_000) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        " , ",
        "items=0-9",  # unknown unit
        "none",
        "bytes =0-9",  # no whitespace around "="
        "bytes= =0-9",
        "bytes=5-2",  # reversed
        "bytes=0-9,5-2",  # one reversed spec invalidates the whole field
        "bytes=0-9,junk",
        "bytes=-5-",
        "bytes=--5",
        "bytes=-",
        "bytes=5",
        "bytes=-1-2",
        "bytes=+5-",
        "bytes=0x10-",
        "bytes=1e30-",
        "bytes=1.5-2",
        "bytes=0 - 9",  # no whitespace inside a range-spec
        "bytes=5_0-60",  # int() would accept this
        "bytes=\u0663-",  # an Arabic-Indic digit three; int() would accept it too
        "bytes=0-9;q=1",
        "bytes=0-9\r\n",
    ],
)
def test_invalid_range_fields_are_ignored(header: str | None) -> None:
    assert parse_range(header, 10_000) == Whole()


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10000-", 10_000),  # first-pos equal to the size is past the end
        ("bytes=10000-20000,20000-", 10_000),
        ("bytes=-0", 10_000),
        ("bytes=-000", 10_000),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=-0", 0),
        ("bytes=" + "9" * 40 + "-", 10_000),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    assert parse_range(header, size) == Unsatisfiable()


def test_a_suffix_of_an_empty_representation_is_the_whole_empty_representation() -> None:
    # RFC 9110 §14.1.1: on a zero-length representation a non-zero suffix is satisfiable, and means
    # the entire (empty) representation, which no 206 Content-Range can describe.
    assert parse_range("bytes=-5", 0) == Whole()
    assert parse_range("bytes=0-,-5", 0) == Whole()


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-9 , 20-29",
        "bytes=0-9,\t20-29",
        "bytes=0-9,,20-29",  # empty list elements are skipped
        ",bytes=0-9,20-29".removeprefix(","),
        "bytes=,0-9,20-29,",
        "  bytes=0-9,20-29\t",  # field values arrive trimmed, but be safe
        "bytes= 0-9,20-29",
    ],
)
def test_ows_around_commas(header: str) -> None:
    assert parse_range(header, 100) == partial((0, 10), (20, 30))


def test_huge_numbers_are_exact_and_cheap() -> None:
    huge = "1" + "0" * 30
    assert parse_range(f"bytes=0-{huge}", 100) == partial((0, 100))
    assert parse_range(f"bytes=-{huge}", 100) == partial((0, 100))
    assert parse_range(f"bytes={huge}-", 100) == Unsatisfiable()
    # reversal is decided on the exact values, however long
    assert parse_range(f"bytes={huge}1-{huge}0", 100) == Whole()
    assert parse_range(f"bytes={huge}0-{huge}1", 100) == Unsatisfiable()
    # longer than int()'s 4,300-digit limit
    giant = "9" * 10_000
    assert parse_range(f"bytes=0-{giant}", 100) == partial((0, 100))
    assert parse_range(f"bytes={giant}-{giant}", 100) == Unsatisfiable()
    assert parse_range(f"bytes=0-{'0' * 10_000}5", 100) == partial((0, 6))


def test_too_many_ranges_are_ignored() -> None:
    sixteen = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(16))
    assert isinstance(parse_range(sixteen, 1000), Partial)
    assert parse_range(sixteen + ",500-501", 1000) == Whole()
    assert parse_range("bytes=0-0,2-2", 1000, max_ranges=1) == Whole()
    # counted as requested, before coalescing: 17 identical ranges are refused as well
    assert parse_range("bytes=" + ",".join(["0-0"] * 17), 1000) == Whole()
    # empty elements do not count
    assert parse_range("bytes=0-0," + "," * 100, 1000) == partial((0, 1))


def test_apache_killer_header_costs_at_most_the_representation() -> None:
    # CVE-2011-3192's shape: many overlapping ranges. Within max_ranges they collapse to one.
    header = "bytes=0-," + ",".join(f"5-{i}" for i in range(5, 19))
    decision = parse_range(header, 10_000, max_ranges=16)
    assert decision == partial((0, 10_000))
    header = "bytes=" + ",".join(f"5-{i}" for i in range(5, 1300))
    assert parse_range(header, 10_000) == Whole()


@pytest.mark.parametrize(("size", "max_ranges"), [(-1, 16), (10, 0)])
def test_parse_range_checks_its_arguments(size: int, max_ranges: int) -> None:
    with pytest.raises(ValueError, match="must"):
        parse_range("bytes=0-1", size, max_ranges=max_ranges)


# --- parse_range: properties ----------------------------------------------------------------------------

OWS = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def range_spec(draw: st.DrawFn) -> str:
    first = draw(st.integers(0, 2_000))
    kind = draw(st.sampled_from(["int", "open", "suffix"]))
    if kind == "int":
        return f"{first}-{first + draw(st.integers(0, 2_000))}"
    if kind == "open":
        return f"{first}-"
    return f"-{first}"


@st.composite
def valid_range_header(draw: st.DrawFn) -> str:
    specs = draw(st.lists(range_spec(), min_size=1, max_size=20))
    separators = [draw(OWS) + "," + draw(OWS) for _ in specs[1:]]
    body = specs[0] + "".join(sep + spec for sep, spec in zip(separators, specs[1:], strict=True))
    return draw(st.sampled_from(["bytes", "Bytes", "BYTES"])) + "=" + body


def covered(specs: list[str], size: int) -> set[int]:
    """A reference model: the byte positions a list of valid specs asks for."""
    wanted: set[int] = set()
    for spec in specs:
        first, _, last = spec.partition("-")
        if not first:
            wanted.update(range(max(size - int(last), 0), size))
        else:
            wanted.update(range(int(first), min(int(last) + 1 if last else size, size)))
    return wanted


def check_invariants(decision: RangeDecision, size: int) -> None:
    assert isinstance(decision, Whole | Partial | Unsatisfiable)
    if isinstance(decision, Partial):
        assert decision.ranges
        for r in decision.ranges:
            assert 0 <= r.start < r.stop <= size
        ordered = sorted(decision.ranges, key=lambda r: r.start)
        for before, after in itertools.pairwise(ordered):
            assert before.stop < after.start  # neither overlapping nor adjacent


@given(valid_range_header(), st.integers(0, 3_000))
def test_valid_headers_get_exactly_the_bytes_asked_for(header: str, size: int) -> None:
    decision = parse_range(header, size, max_ranges=20)
    check_invariants(decision, size)
    specs = [spec.strip(" \t") for spec in header.partition("=")[2].split(",")]
    wanted = covered(specs, size)
    if isinstance(decision, Partial):
        got = [i for r in decision.ranges for i in range(r.start, r.stop)]
        assert len(got) == len(set(got))  # no byte twice
        assert set(got) == wanted
    elif isinstance(decision, Unsatisfiable):
        assert not wanted
    else:
        assert size == 0  # only a suffix on an empty representation
        assert not wanted


@given(st.text(max_size=200), st.integers(0, 10**20), st.integers(1, 32))
def test_arbitrary_text_never_crashes(header: str, size: int, max_ranges: int) -> None:
    check_invariants(parse_range(header, size, max_ranges=max_ranges), size)


RANGE_ALPHABET = st.sampled_from([*"0123456789-, \t=", "bytes=", "9" * 40])


@given(st.lists(RANGE_ALPHABET, max_size=40).map("".join), st.integers(0, 10**30))
def test_range_like_junk_never_crashes(tail: str, size: int) -> None:
    check_invariants(parse_range("bytes=" + tail, size), size)


# --- validators -------------------------------------------------------------------------------------------


def test_strong_etag() -> None:
    assert strong_etag(SHA_HEX) == ETAG
    assert strong_etag(SHA_HEX.upper()) == ETAG
    with pytest.raises(ValueError, match="hex"):
        strong_etag('abc"def')


@pytest.mark.parametrize(
    ("header", "hit"),
    [
        (None, False),
        ("*", True),
        (" * ", True),
        (ETAG, True),
        (f"W/{ETAG}", True),  # weak comparison
        (f'"x", {ETAG}', True),
        (f'"x",{ETAG} ,"y"', True),
        (f'"a,b", {ETAG}', True),  # a comma inside a tag is not a separator
        (f", ,{ETAG},", True),
        ('"x", "y"', False),
        ("", False),
        (SHA_HEX, False),  # unquoted: malformed
        (f"{ETAG} junk", False),
        (f"{ETAG}{ETAG}", False),
        (f'"*", "{SHA_HEX[:10]}"', False),
        (f"w/{ETAG}", False),  # W/ is case-sensitive
    ],
)
def test_if_none_match(header: str | None, hit: bool) -> None:
    assert if_none_match_hit(header, ETAG) is hit


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (None, True),
        (ETAG, True),
        (f" {ETAG} ", True),
        (f"W/{ETAG}", False),  # strong comparison: a weak tag never matches
        ('"other"', False),
        (f"{ETAG}, {ETAG}", False),  # one validator, not a list
        ("*", False),
        ("Sun, 06 Nov 1994 08:49:37 GMT", False),  # a date, and we have no Last-Modified
        ("garbage", False),
        ("", False),
    ],
)
def test_if_range_by_entity_tag(header: str | None, allowed: bool) -> None:
    assert if_range_allows_partial(header, ETAG) is allowed


def test_if_range_never_matches_our_weak_tag() -> None:
    assert if_range_allows_partial(f"W/{ETAG}", f"W/{ETAG}") is False
    assert if_range_allows_partial(ETAG, f"W/{ETAG}") is False


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", True),
        ("Sunday, 06-Nov-94 08:49:37 GMT", True),
        ("Sun Nov  6 08:49:37 1994", True),
        ("Sun, 06 Nov 1994 08:49:38 GMT", False),  # only an exact match
        ("Sun, 06 Nov 1994 08:49:36 GMT", False),  # not "not modified since"
        ("Sun, 06 Nov 1994 08:49:37 UTC", False),
        ("Sun, 6 Nov 1994 08:49:37 GMT", False),
        ("06 Nov 1994 08:49:37 GMT", False),
    ],
)
def test_if_range_by_date(header: str, allowed: bool) -> None:
    assert if_range_allows_partial(header, ETAG, last_modified_s=EXAMPLE_DATE_S) is allowed


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ],
)
def test_http_date_formats(value: str) -> None:
    assert parse_http_date(value, reference_s=EXAMPLE_DATE_S) == EXAMPLE_DATE_S


def test_http_date_rfc850_years_follow_the_fifty_year_rule() -> None:
    year_2026 = 1_767_225_600  # 2026-01-01T00:00:00Z
    assert parse_http_date("Tuesday, 01-Jan-80 00:00:00 GMT", reference_s=year_2026) == 315_532_800  # 1980
    assert parse_http_date("Friday, 01-Jan-27 00:00:00 GMT", reference_s=year_2026) == 1_798_761_600  # 2027
    # exactly 50 years ahead is not "more than 50 years in the future"
    assert parse_http_date("Wednesday, 01-Jan-76 00:00:00 GMT", reference_s=year_2026) == 3_345_062_400


@pytest.mark.parametrize(
    "value",
    ["Mon, 30 Feb 2026 00:00:00 GMT", "Mon, 01 Jan 2026 24:00:00 GMT", "Mon, 01 Foo 2026 00:00:00 GMT", ""],
)
def test_http_date_rejects_impossible_dates(value: str) -> None:
    assert parse_http_date(value, reference_s=0) is None


@given(st.text(max_size=100))
def test_validators_never_crash_on_arbitrary_fields(header: str) -> None:
    assert isinstance(if_none_match_hit(header, ETAG), bool)
    assert isinstance(if_range_allows_partial(header, ETAG, EXAMPLE_DATE_S), bool)


# --- multipart/byteranges -----------------------------------------------------------------------------


def assemble(framing: MultipartByteranges, data: bytes) -> bytes:
    """The body, written the way the download handler writes it."""
    body = bytearray()
    for preamble, part in framing.parts():
        body += preamble
        body += data[part.start : part.stop]
    body += framing.epilogue_bytes
    return bytes(body)


def test_multipart_framing_is_byte_exact() -> None:
    data = bytes(range(10)) * 10
    framing = MultipartByteranges(
        (ByteRange(0, 3), ByteRange(97, 100)), len(data), "application/pdf", "THIS_STRING_SEPARATES"
    )
    assert framing.content_type_header == "multipart/byteranges; boundary=THIS_STRING_SEPARATES"
    expected = (
        b"--THIS_STRING_SEPARATES\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Range: bytes 0-2/100\r\n"
        b"\r\n"
        b"\x00\x01\x02"
        b"\r\n--THIS_STRING_SEPARATES\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Range: bytes 97-99/100\r\n"
        b"\r\n"
        b"\x07\x08\x09"
        b"\r\n--THIS_STRING_SEPARATES--\r\n"
    )
    assert assemble(framing, data) == expected
    assert framing.content_length == len(expected)


def test_multipart_without_a_content_type() -> None:
    framing = MultipartByteranges((ByteRange(0, 1),), 1, None, "b")
    assert assemble(framing, b"x") == b"--b\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--b--\r\n"


def parse_multipart(content_type: str, body: bytes) -> EmailMessage:
    head = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    assert isinstance(message, EmailMessage)
    return message


def test_multipart_reads_back_with_the_standard_mime_parser() -> None:
    data = bytes(range(256)) * 40  # every byte value, CR and LF included
    decision = parse_range("bytes=9000-9099,0-99,5000-5199,-10", len(data))
    assert isinstance(decision, Partial)
    framing = MultipartByteranges(decision.ranges, len(data), "image/png", new_boundary())
    body = assemble(framing, data)
    assert framing.content_length == len(body)

    message = parse_multipart(framing.content_type_header, body)
    assert message.get_content_type() == "multipart/byteranges"
    assert not message.defects
    parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in parts] == [
        "bytes 9000-9099/10240",
        "bytes 0-99/10240",
        "bytes 5000-5199/10240",
        "bytes 10230-10239/10240",
    ]
    for part, r in zip(parts, decision.ranges, strict=True):
        assert part.get_content_type() == "image/png"
        assert part.get_payload(decode=True) == data[r.start : r.stop]


@given(st.data())
def test_multipart_content_length_is_exact(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 5_000))
    header = data.draw(valid_range_header())
    decision = parse_range(header, size, max_ranges=20)
    if not isinstance(decision, Partial):
        return
    content = data.draw(st.binary(min_size=size, max_size=size))
    content_type = data.draw(st.sampled_from([None, "video/mp4", "application/octet-stream"]))
    framing = MultipartByteranges(decision.ranges, size, content_type, new_boundary())
    body = assemble(framing, content)
    assert framing.content_length == len(body)
    message = parse_multipart(framing.content_type_header, body)
    payloads = [p.get_payload(decode=True) for p in message.iter_parts()]
    assert payloads == [content[r.start : r.stop] for r in decision.ranges]


def test_new_boundary_is_fresh_and_token_safe() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        MultipartByteranges((ByteRange(0, 1),), 1, None, boundary)  # validates it


@pytest.mark.parametrize(
    ("ranges", "size", "content_type", "boundary", "message"),
    [
        ((), 10, None, "b", "at least one"),
        ((ByteRange(0, 11),), 10, None, "b", "exceeds"),
        ((ByteRange(0, 1),), 10, None, "", "boundary"),
        ((ByteRange(0, 1),), 10, None, "x" * 71, "boundary"),
        ((ByteRange(0, 1),), 10, None, "a b", "boundary"),
        ((ByteRange(0, 1),), 10, None, 'a"b', "boundary"),
        ((ByteRange(0, 1),), 10, "text/plain\r\nX-Evil: 1", "b", "content type"),
        ((ByteRange(0, 1),), 10, "", "b", "content type"),
    ],
)
def test_multipart_checks_its_arguments(
    ranges: tuple[ByteRange, ...], size: int, content_type: str | None, boundary: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MultipartByteranges(ranges, size, content_type, boundary)


# --- upload digests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        f"sha-256=:{SHA_B64}:",
        f"sha-256=:{SHA_B64.rstrip('=')}:",  # padding is optional in a byte sequence
        f"sha-512=:{base64.b64encode(b'x' * 64).decode()}:, sha-256=:{SHA_B64}:",
        f"sha-256=:{SHA_B64}:;note=1",
        f'unixsum=1, id-sha-256=:AAAA:, md5=?1;x="y", sha-256=:{SHA_B64}:',
        f"sha-256=:AAAA:, sha-256=:{SHA_B64}:",  # a later duplicate wins (RFC 8941 §4.2.2)
        f"x=(a b;c=2 3), sha-256=:{SHA_B64}:",  # inner lists of unknown members are skipped
        f"  sha-256=:{SHA_B64}:  ",
    ],
)
def test_content_digest(value: str) -> None:
    assert parse_content_digest(value) == SHA


@pytest.mark.parametrize("value", ["", "sha-512=:YQ==:", "md5=:AAAA:, unixsum=5", "sha-256-x=:AAAA:"])
def test_content_digest_without_sha256(value: str) -> None:
    assert parse_content_digest(value) is None


@pytest.mark.parametrize(
    "value",
    [
        f"SHA-256=:{SHA_B64}:",  # structured-field keys are lowercase
        f"sha-256={SHA_B64}",  # not a byte sequence
        f"sha-256=:{SHA_B64}",
        "sha-256=:AAAA:",  # 3 bytes
        "sha-256=:@@@@:",
        f"sha-256=:{SHA_B64[:10]}={SHA_B64[10:]}:",
        f"sha-256=:{SHA_B64}:,",
        f"sha-256=:{SHA_B64}: sha-512=:AA==:",
        'sha-256="abc"',
        "sha-256=(:AAAA:)",
        "sha-256",  # a bare key is boolean true
        f"sha-256=:{SHA_B64}:;",
        "md5=:AAAA:;;",
        "x=(a",
        "x=(a(",
    ],
)
def test_malformed_content_digest(value: str) -> None:
    with pytest.raises(DigestError):
        parse_content_digest(value)


@pytest.mark.parametrize(
    "value",
    [
        f"SHA-256={SHA_B64}",
        f"sha-256={SHA_B64}",
        f"MD5=XrY7u+Ae7tCTyyK7j1rNww==, SHA-256={SHA_B64}",
        f"SHA-256={SHA_B64} , UNIXsum=30637",
        f"SHA-256={SHA_B64},SHA-256={SHA_B64}",
    ],
)
def test_legacy_digest(value: str) -> None:
    assert parse_legacy_digest(value) == SHA


@pytest.mark.parametrize("value", ["", "MD5=XrY7u+Ae7tCTyyK7j1rNww==", "SHA=abcd, id-sha-256=AAAA"])
def test_legacy_digest_without_sha256(value: str) -> None:
    assert parse_legacy_digest(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "SHA-256",
        "SHA-256=",
        f"SHA 256={SHA_B64}",
        "SHA-256=AAAA",
        f"SHA-256=:{SHA_B64}:",
        f"SHA-256={SHA_B64}, SHA-256={base64.b64encode(b'y' * 32).decode()}",
    ],
)
def test_malformed_legacy_digest(value: str) -> None:
    with pytest.raises(DigestError):
        parse_legacy_digest(value)


def test_expected_sha256_from_headers() -> None:
    other = base64.b64encode(b"y" * 32).decode()
    assert expected_sha256({}) is None
    assert expected_sha256({"Content-Digest": f"sha-256=:{SHA_B64}:"}) == SHA
    assert expected_sha256({"Digest": f"SHA-256={SHA_B64}"}) == SHA
    assert expected_sha256({"Content-Digest": "sha-512=:YQ==:", "Digest": f"SHA-256={SHA_B64}"}) == SHA
    assert expected_sha256({"Content-Digest": f"sha-256=:{SHA_B64}:", "Digest": f"SHA-256={SHA_B64}"}) == SHA
    with pytest.raises(DigestError, match="different"):
        expected_sha256({"Content-Digest": f"sha-256=:{SHA_B64}:", "Digest": f"SHA-256={other}"})
    with pytest.raises(DigestError):
        expected_sha256({"Content-Digest": "nonsense!", "Digest": f"SHA-256={SHA_B64}"})


def test_digest_errors_share_the_module_root() -> None:
    assert issubclass(DigestError, MediaProtocolError)
    assert issubclass(MediaProtocolError, ValueError)


@given(st.binary(min_size=32, max_size=32))
def test_digest_round_trip(digest: bytes) -> None:
    encoded = base64.b64encode(digest).decode()
    assert parse_content_digest(f"sha-256=:{encoded}:") == digest
    assert parse_legacy_digest(f"SHA-256={encoded}") == digest


@given(st.text(max_size=120))
def test_digest_parsers_fail_only_with_digest_error(value: str) -> None:
    for parse in (parse_content_digest, parse_legacy_digest):
        try:
            result = parse(value)
        except DigestError:
            continue
        assert result is None or len(result) == 32
