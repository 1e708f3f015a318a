"""HTTP range requests, validators, multipart/byteranges framing and upload digests, sans-IO.

Strings in, decisions and bytes out: nothing here reads storage or knows the web framework. The
download handler asks `parse_range` what to send, frames several ranges with `MultipartByteranges`,
and the upload handler asks `expected_sha256` which digest the body must have.

Choices where the RFCs leave room (RFC 9110 §14, RFC 9530, RFC 3230):

- An invalid `Range` (unknown unit, bad syntax, a reversed `5-2`, junk) is ignored: 200 with the whole
  representation, as §14.2 requires ("MUST ignore ... invalid ranges-specifier" via §14.1.1).
- More than `max_ranges` range-specs: the whole header is ignored (200, whole), like Apache's
  `MaxRanges` and nginx's `max_ranges`. That answer costs one copy of the representation at most, and
  a 416 would tell a broken client less.
- Overlapping or adjacent ranges are coalesced (§15.3.7.2 allows it "regardless of the order"), so a
  206 never carries a byte twice: its payload is at most the representation's size, which defuses the
  classic many-overlapping-ranges attack (CVE-2011-3192). When nothing had to be merged the ranges
  keep the request's order; when something was merged they come out sorted ascending.
- A zero-length representation has no satisfiable `first-last` range (416), but a non-zero suffix
  `-N` is satisfiable per §14.1.1 and means "the entire representation", which is empty and has no
  206 form (`bytes 0--1/0` does not exist): that case answers `Whole()`.
- Numbers of any length are accepted and compared exactly; one past the size means the same as any
  other past the size, so nothing longer than the size's digits is ever converted to an int.

Malformed digests raise `DigestError`; every error raised on purpose by this module is a
`MediaProtocolError` (a `ValueError`). Programming errors (a negative size, a range outside the size)
are plain `ValueError`s.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

__all__ = [
    "ByteRange",
    "DigestError",
    "HeaderLookup",
    "MediaProtocolError",
    "MultipartByteranges",
    "Partial",
    "RangeDecision",
    "Unsatisfiable",
    "Whole",
    "expected_sha256",
    "if_none_match_hit",
    "if_range_allows_partial",
    "new_boundary",
    "parse_content_digest",
    "parse_http_date",
    "parse_legacy_digest",
    "parse_range",
    "strong_etag",
]

_OWS = " \t"


class MediaProtocolError(ValueError):
    """Root of the errors raised on a peer's malformed header values; the I/O layer turns it into a 400."""


class DigestError(MediaProtocolError):
    """A `Content-Digest` or `Digest` field that cannot be parsed, or whose sha-256 is malformed."""


# --- ranges -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The bytes [start, stop) of a representation: half-open like a Python slice, never empty.

    `stop` is one past the last byte, so `length == stop - start`; HTTP's `first-last` positions are
    both inclusive, which `content_range` accounts for."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"not a non-empty byte range: [{self.start}, {self.stop})")

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        """The `Content-Range` value for this range of a representation of `size` bytes."""
        if self.stop > size:
            raise ValueError(f"range [{self.start}, {self.stop}) exceeds the size {size}")
        return f"bytes {self.start}-{self.stop - 1}/{size}"


@dataclass(frozen=True, slots=True)
class Whole:
    """Serve 200 with the whole representation: no `Range`, or one that is ignored."""


@dataclass(frozen=True, slots=True)
class Partial:
    """Serve 206 with these ranges: non-empty, within the size, never overlapping or adjacent."""

    ranges: tuple[ByteRange, ...]


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Serve 416: a valid `Range` none of whose ranges overlaps the representation."""

    @staticmethod
    def content_range(size: int) -> str:
        return f"bytes */{size}"


RangeDecision: TypeAlias = Whole | Partial | Unsatisfiable

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# [0-9], not \d: int() and \d accept non-ASCII digits, HTTP does not.
_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")


def parse_range(header: str | None, size: int, *, max_ranges: int = 16) -> RangeDecision:
    """Decide what a `Range` field asks of a representation of `size` bytes (RFC 9110 §14.1-14.2).

    OWS is accepted around each comma-separated element, empty elements are skipped; none is allowed
    around `=` or inside a range-spec. The unit is matched case-insensitively. See the module's
    docstring for what is ignored, coalesced or refused."""
    if size < 0:
        raise ValueError(f"size must not be negative, got {size}")
    if max_ranges < 1:
        raise ValueError(f"max_ranges must be at least 1, got {max_ranges}")
    if header is None:
        return Whole()
    unit, equals, range_set = header.strip(_OWS).partition("=")
    if not equals or _TOKEN.fullmatch(unit) is None or unit.lower() != "bytes":
        return Whole()
    specs = [spec for spec in (element.strip(_OWS) for element in range_set.split(",")) if spec]
    if not specs or len(specs) > max_ranges:
        return Whole()
    wanted: list[ByteRange] = []
    empty_but_satisfiable = False
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return Whole()
        first, last, suffix = match.groups()
        if suffix is not None:
            suffix_length = _capped(suffix, size)
            if suffix_length > 0 and size > 0:
                wanted.append(ByteRange(size - suffix_length, size))
            elif not _is_zero(suffix):
                empty_but_satisfiable = True
            continue
        if last and _less(last, first):
            return Whole()
        start = _capped(first, size)
        if start < size:
            stop = size if not last else min(_capped(last, size) + 1, size)
            wanted.append(ByteRange(start, stop))
    if not wanted:
        return Whole() if empty_but_satisfiable else Unsatisfiable()
    return Partial(_coalesce(wanted))


def _capped(digits: str, cap: int) -> int:
    """The decimal `digits` as an int, or `cap` if they are more: only as many digits as `cap` has
    are ever converted, so a 10,000-digit position costs nothing and cannot hit int()'s limit."""
    significant = digits.lstrip("0")
    if len(significant) > len(str(cap)):
        return cap
    return min(int(significant or "0"), cap)


def _is_zero(digits: str) -> bool:
    return not digits.lstrip("0")


def _less(a: str, b: str) -> bool:
    """Exact `int(a) < int(b)` for decimal digit strings of any length."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) < (len(b), b)


def _coalesce(ranges: list[ByteRange]) -> tuple[ByteRange, ...]:
    ordered = sorted(ranges, key=lambda r: (r.start, r.stop))
    merged = [ordered[0]]
    for current in ordered[1:]:
        previous = merged[-1]
        if current.start <= previous.stop:
            merged[-1] = ByteRange(previous.start, max(previous.stop, current.stop))
        else:
            merged.append(current)
    if len(merged) == len(ranges):
        return tuple(ranges)
    return tuple(merged)


# --- validators ---------------------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-fA-F]+")
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def strong_etag(sha256_hex: str) -> str:
    """The strong entity tag of content whose sha-256 is `sha256_hex`: the lowercase hex, quoted."""
    if _HEX.fullmatch(sha256_hex) is None:
        raise ValueError("an entity tag is made from a hex digest")
    return f'"{sha256_hex.lower()}"'


def if_none_match_hit(header: str | None, etag: str) -> bool:
    """Whether `If-None-Match` matches the current `etag` (weak comparison, RFC 9110 §13.1.2), i.e.
    whether a GET answers 304. `*` matches any existing representation. A malformed field matches
    nothing, so the client simply gets the content."""
    if header is None:
        return False
    value = header.strip(_OWS)
    if value == "*":
        return True
    tags = _entity_tags(value)
    _, ours = _one_entity_tag(etag)
    return tags is not None and any(opaque == ours for _, opaque in tags)


def if_range_allows_partial(header: str | None, etag: str, last_modified_s: int | None = None) -> bool:
    """Whether `Range` may be honoured given `If-Range` (RFC 9110 §13.1.5); False means send 200 whole.

    No `If-Range` allows it. An entity tag must match `etag` by strong comparison (a weak tag on
    either side never matches). An HTTP-date matches only if it equals `last_modified_s` exactly;
    pass `last_modified_s` only when it is the `Last-Modified` sent and is a strong validator (true
    of immutable media). Anything else, malformed values included, does not match."""
    if header is None:
        return True
    value = header.strip(_OWS)
    theirs = _ENTITY_TAG.fullmatch(value)
    if theirs is not None:
        our_weak, ours = _one_entity_tag(etag)
        return theirs.group(1) is None and not our_weak and theirs.group(2) == ours
    if last_modified_s is None:
        return False
    return parse_http_date(value, reference_s=last_modified_s) == last_modified_s


def _one_entity_tag(etag: str) -> tuple[bool, str]:
    match = _ENTITY_TAG.fullmatch(etag)
    if match is None:
        raise ValueError(f"not an entity tag: {etag!r}")
    return match.group(1) is not None, match.group(2)


def _entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """`#entity-tag` as (weak, opaque) pairs, or None if malformed. Commas may occur inside a tag."""
    tags: list[tuple[bool, str]] = []
    i, end = 0, len(value)
    while i < end:
        if value[i] in " \t,":
            i += 1
            continue
        match = _ENTITY_TAG.match(value, i)
        if match is None:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        i = match.end()
        while i < end and value[i] in _OWS:
            i += 1
        if i < end and value[i] != ",":
            return None
    return tags


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(
    rf"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) "
    rf"{_TIME} GMT"
)
_ASCTIME_DATE = re.compile(
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})"
)


def parse_http_date(value: str, *, reference_s: int) -> int | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime, RFC 9110 §5.6.7) as Unix seconds, or None.

    An RFC 850 two-digit year is the latest year with those digits that is not more than 50 years
    after `reference_s`'s year (pass the current time, or the time the date is compared with)."""
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
        return _timestamp(int(year), month, int(day), hour, minute, second)
    if match := _RFC850_DATE.fullmatch(value):
        day, month, yy, hour, minute, second = match.groups()
        reference_year = datetime.datetime.fromtimestamp(reference_s, datetime.UTC).year
        year = reference_year - (reference_year - int(yy)) % 100
        if year + 100 <= reference_year + 50:
            year += 100
        return _timestamp(year, month, int(day), hour, minute, second)
    if match := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
        return _timestamp(int(year), month, int(day), hour, minute, second)
    return None


def _timestamp(year: int, month: str, day: int, hour: str, minute: str, second: str) -> int | None:
    try:
        when = datetime.datetime(year, _MONTHS.index(month) + 1, day, int(hour), int(minute), int(second))
    except ValueError:
        return None
    return calendar.timegm(when.timetuple())


# --- multipart/byteranges -----------------------------------------------------------------------------

# RFC 2046 bcharsnospace limited to what a token allows, so the parameter never needs quoting.
_BOUNDARY = re.compile(r"[0-9A-Za-z'+_.-]{1,70}")
_FIELD_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def new_boundary() -> str:
    """A fresh multipart boundary: 128 random bits, so it occurs in no stored content in practice."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class MultipartByteranges:
    """The framing of a multipart/byteranges 206 body (RFC 9110 §14.6, RFC 2046 §5.1.1).

    The body is, for each of `parts()`, the preamble followed by that range's bytes, then
    `epilogue_bytes`; `content_length` is its exact length. Each part has `Content-Type` (omitted
    when `content_type` is None) and `Content-Range`; lines end in CRLF, and the CRLF before each
    boundary after the first belongs to that boundary, as RFC 2046 says."""

    ranges: tuple[ByteRange, ...]
    size: int
    content_type: str | None
    boundary: str
    _preambles: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", tuple(self.ranges))
        if not self.ranges:
            raise ValueError("a multipart/byteranges body needs at least one range")
        if any(part.stop > self.size for part in self.ranges):
            raise ValueError(f"a range exceeds the size {self.size}")
        if _BOUNDARY.fullmatch(self.boundary) is None:
            raise ValueError("a boundary is 1-70 characters of [0-9A-Za-z'+_.-]")
        if self.content_type is not None and _FIELD_VALUE.fullmatch(self.content_type) is None:
            raise ValueError("the content type must be printable ASCII without surrounding spaces")
        type_line = "" if self.content_type is None else f"Content-Type: {self.content_type}\r\n"
        head = f"--{self.boundary}\r\n{type_line}"
        preambles = tuple(
            (b"" if i == 0 else b"\r\n")
            + f"{head}Content-Range: {part.content_range(self.size)}\r\n\r\n".encode("ascii")
            for i, part in enumerate(self.ranges)
        )
        object.__setattr__(self, "_preambles", preambles)

    @property
    def content_type_header(self) -> str:
        return f"multipart/byteranges; boundary={self.boundary}"

    @property
    def epilogue_bytes(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_length(self) -> int:
        framing = sum(len(preamble) for preamble in self._preambles) + len(self.epilogue_bytes)
        return framing + sum(part.length for part in self.ranges)

    def parts(self) -> Iterator[tuple[bytes, ByteRange]]:
        """(preamble, range) in order: write the preamble, then the range's bytes."""
        return zip(self._preambles, self.ranges, strict=True)


# --- upload digests -----------------------------------------------------------------------------------


class HeaderLookup(Protocol):
    """What `expected_sha256` needs of request headers: a (case-insensitive) `get`."""

    def get(self, key: str, /) -> str | None: ...


_SHA256_BYTES = 32
_SF_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_SF_BARE_ITEM = re.compile(
    r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?"  # integer or decimal
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'  # string
    r"|:(?P<bytes>[A-Za-z0-9+/=]*):"  # byte sequence
    r"|\?[01]"  # boolean
    r"|@-?[0-9]{1,15}"  # date (RFC 9651)
    r"|[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*"  # token
)


def parse_content_digest(value: str) -> bytes | None:
    """The sha-256 a `Content-Digest` field (RFC 9530, a Structured Fields Dictionary) announces.

    None when it names only algorithms we do not check (sha-512, legacy ones): the body is accepted
    unchecked. Raises `DigestError` if the field is not a valid Dictionary, or its `sha-256` is not
    a Byte Sequence of 32 bytes."""
    members = _sf_dictionary(value)
    if "sha-256" not in members:
        return None
    encoded = members["sha-256"]
    if encoded is None:
        raise DigestError("Content-Digest sha-256 must be a byte sequence")
    return _sha256_from_base64(encoded, "Content-Digest")


def parse_legacy_digest(value: str) -> bytes | None:
    """The SHA-256 a legacy `Digest` field (RFC 3230, RFC 5843) announces, algorithm names matched
    case-insensitively. None when it names only algorithms we do not check; raises `DigestError` if
    an element is not `algorithm=value` or the SHA-256 is not base64 of 32 bytes."""
    found: bytes | None = None
    for element in value.split(","):
        element = element.strip(_OWS)
        if not element:
            continue
        algorithm, equals, encoded = element.partition("=")
        if not equals or _TOKEN.fullmatch(algorithm) is None or not encoded:
            raise DigestError("Digest must be a list of algorithm=value")
        if algorithm.lower() == "sha-256":
            digest = _sha256_from_base64(encoded, "Digest")
            if found is not None and found != digest:
                raise DigestError("Digest names two different SHA-256 values")
            found = digest
    return found


def expected_sha256(headers: HeaderLookup) -> bytes | None:
    """The sha-256 an upload must have per `Content-Digest` or, failing that, legacy `Digest`;
    None if neither names one. Raises `DigestError` on a malformed field, or if the two disagree."""
    content_digest = headers.get("Content-Digest")
    legacy_digest = headers.get("Digest")
    modern = None if content_digest is None else parse_content_digest(content_digest)
    legacy = None if legacy_digest is None else parse_legacy_digest(legacy_digest)
    if modern is not None and legacy is not None and modern != legacy:
        raise DigestError("Content-Digest and Digest name different sha-256 values")
    return modern if modern is not None else legacy


def _sha256_from_base64(encoded: str, field_name: str) -> bytes:
    """Strict base64, "=" padding optional (RFC 8941 §4.2.7 asks parsers to tolerate its absence)."""
    unpadded = encoded.rstrip("=")
    try:
        if "=" in unpadded or len(encoded) - len(unpadded) > 2:
            raise ValueError("misplaced padding")
        digest = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DigestError(f"{field_name} sha-256 is not valid base64") from exc
    if len(digest) != _SHA256_BYTES:
        raise DigestError(f"{field_name} sha-256 must be {_SHA256_BYTES} bytes, got {len(digest)}")
    return digest


def _sf_dictionary(value: str) -> dict[str, str | None]:
    """An RFC 8941 Dictionary: each key to its item's base64 text if it is a Byte Sequence, else None.
    Parameters are checked and dropped; a later duplicate key wins, as the RFC says."""
    members: dict[str, str | None] = {}
    text = value.strip(" ")
    i, end = 0, len(text)
    while i < end:
        key = _SF_KEY.match(text, i)
        if key is None:
            raise DigestError("Content-Digest is not a structured dictionary")
        i = key.end()
        item: str | None = None
        if i < end and text[i] == "=":
            if i + 1 < end and text[i + 1] == "(":
                i = _sf_inner_list(text, i + 2)
            else:
                item, i = _sf_bare_item(text, i + 1)
        i = _sf_parameters(text, i)
        members[key.group()] = item
        while i < end and text[i] in _OWS:
            i += 1
        if i == end:
            break
        if text[i] != ",":
            raise DigestError("Content-Digest members must be separated by commas")
        i += 1
        while i < end and text[i] in _OWS:
            i += 1
        if i == end:
            raise DigestError("Content-Digest ends with a comma")
    return members


def _sf_bare_item(text: str, i: int) -> tuple[str | None, int]:
    match = _SF_BARE_ITEM.match(text, i)
    if match is None:
        raise DigestError("Content-Digest has a malformed value")
    return match.group("bytes"), match.end()


def _sf_parameters(text: str, i: int) -> int:
    while i < len(text) and text[i] == ";":
        i += 1
        while i < len(text) and text[i] == " ":
            i += 1
        key = _SF_KEY.match(text, i)
        if key is None:
            raise DigestError("Content-Digest has a malformed parameter")
        i = key.end()
        if i < len(text) and text[i] == "=":
            _, i = _sf_bare_item(text, i + 1)
    return i


def _sf_inner_list(text: str, i: int) -> int:
    """Skips an inner list whose "(" ends before `i`; returns the index after its ")"."""
    while True:
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == ")":
            return i + 1
        if i > 0 and text[i - 1] not in " (":
            raise DigestError("Content-Digest inner list items must be separated by spaces")
        _, i = _sf_bare_item(text, i)
        i = _sf_parameters(text, i)
